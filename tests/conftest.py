"""Shared fixtures: a deterministic phantom factory with known shapes, spacing, affines and labels."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.services.flaky_proxy import flaky_orthanc  # noqa: F401  (that Orthanc behind an unreliable network)
from tests.services.orthanc import orthanc  # noqa: F401  (session fixture: a real Orthanc with DICOMweb)
from tests.services.tls_proxy import orthanc_tls  # noqa: F401  (the same Orthanc behind HTTPS)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def rotation(deg_xyz: tuple[float, float, float]) -> np.ndarray:
    """A 3x3 rotation from Euler angles in degrees (x, then y, then z)."""
    ax, ay, az = np.radians(deg_xyz)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_affine(perm: tuple[int, int, int] = (0, 1, 2), flips: tuple[int, int, int] = (1, 1, 1),
                spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), rot_deg: tuple[float, float, float] = (0, 0, 0),
                origin: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Voxel->RAS affine: array axis i runs along world axis perm[i] with sign flips[i], then rotated."""
    m = np.zeros((3, 3))
    for i, (p, f) in enumerate(zip(perm, flips, strict=True)):
        m[p, i] = f * spacing[i]
    aff = np.eye(4)
    aff[:3, :3] = rotation(rot_deg) @ m
    aff[:3, 3] = origin
    return aff


def all_orientations() -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """The 48 axis permutations x flips."""
    perms = list(itertools.permutations(range(3)))
    flips = list(itertools.product((1, -1), repeat=3))
    return [(p, f) for p in perms for f in flips]  # type: ignore[misc]


def sphere_phantom(shape: tuple[int, int, int], affine: np.ndarray, centre_mm: np.ndarray | None = None,
                   radii_mm: tuple[float, float] = (9.0, 4.0), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like image (HU, float32) and labels (int16): a body at 40 HU surrounded by air (-1000 HU, as a CT in
    Hounsfield units has), a sphere (label 1, 180 HU) with an inner core (label 2, 90 HU), defined in world
    millimetres so every grid sees the same object."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    if centre_mm is None:
        centre_mm = affine[:3, :3] @ (np.asarray(shape) / 2 - 0.5) + affine[:3, 3]
    d = np.linalg.norm(world - np.asarray(centre_mm)[:, None], axis=0).reshape(shape)
    labels = np.zeros(shape, np.int16)
    labels[d < radii_mm[0]] = 1
    labels[d < radii_mm[1]] = 2
    rng = np.random.default_rng(seed)
    body = np.where(d < 2.2 * radii_mm[0], 40.0, -1000.0)
    image = np.where(labels == 1, 180.0, np.where(labels == 2, 90.0, body)) + rng.normal(0, 5, shape)
    return image.astype(np.float32), labels


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, dtype: type | None = None) -> Path:
    img = nib.Nifti1Image(data.astype(dtype) if dtype else data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


@pytest.fixture
def phantom_files(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """An oblique, anisotropic, flipped CT phantom on disk: (image path, label path, affine)."""
    aff = make_affine((2, 0, 1), (-1, 1, -1), (0.9, 1.3, 2.5), (8, -5, 12), (12.0, -40.0, 30.0))
    image, labels = sphere_phantom((40, 36, 16), aff)
    return (save_nifti(tmp_path / "case_a.nii.gz", image, aff, np.int16),
            save_nifti(tmp_path / "case_a_seg.nii.gz", labels, aff, np.uint8), aff)


@pytest.fixture(autouse=True)
def _every_seg_passes_dciodvfy(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used ``tmp_path``: every DICOM SEG made by medpipe (or by the tests' own SEG builder)
    that it left there passes dicom3tools' ``dciodvfy`` with no errors (LABELMAP: less the two lines of
    ``tests.dicom_readback.LABELMAP_UNKNOWN_TO_DCIODVFY``); copies of third-party files are not checked. Skipped
    where dicom3tools is not installed; ``.ci/run`` installs it."""
    yield
    tmp = request.node.funcargs.get("tmp_path")
    if tmp is None or shutil.which("dciodvfy") is None:
        return
    from tests.dicom_readback import seg_dciodvfy_errors, seg_files

    failures = {str(p.relative_to(tmp)): errors for p in seg_files(tmp) if (errors := seg_dciodvfy_errors(p))}
    assert not failures, f"dciodvfy reports errors in the SEGs this test wrote: {failures}"
