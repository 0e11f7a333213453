"""RTSTRUCT output (rt-utils, placed by highdicom's geometry): contours rasterised back onto the series by an
independent reader reach Dice >= 0.98 per structure, for axial, sagittal, oblique and negated-cosine series with
non-square pixels and images; every contour references the source image it lies on; dciodvfy finds no errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medpipe.errors import GeometryError
from medpipe.io.dicom import read_dicom_volume
from medpipe.io.dicom.seg import Algorithm
from medpipe.labels import label_table
from tests.dicom_factory import oblique_iop, write_series
from tests.dicom_readback import LPS_TO_RAS, dciodvfy_errors, dice, rtstruct_masks

pytest.importorskip("rt_utils", reason="rt-utils (medpipe[rt]) not installed")

from medpipe.io.dicom.rtstruct import write_rtstruct

LABELS = {0: "background", 1: "kidney", 2: "tumor", 5: "empty organ"}
ALGO = Algorithm("tiny-test-model", "fedcba9876543210" * 4)
ORIENTATIONS = {
    "axial": "axial",
    "sagittal": "sagittal",
    "oblique": oblique_iop(),
    "negated": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
}


def _structures(shape: tuple[int, int, int]) -> np.ndarray:
    """An ellipsoid (label 1) and an off-centre box (label 2) on a non-square grid; label 5 stays empty."""
    i, j, k = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    m = np.zeros(shape, np.uint8)
    m[((i - 12) / 7.5) ** 2 + ((j - 9) / 5.5) ** 2 + ((k - 4) / 3.2) ** 2 < 1] = 1
    m[22:29, 3:10, 2:6] = 2
    return m


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_rtstruct_round_trip_dice(tmp_path: Path, orientation: str) -> None:
    series = write_series(tmp_path / "dcm", orientation=ORIENTATIONS[orientation], instance_order="shuffled",
                          rows=20, columns=32, pixel_spacing=(0.8, 0.6), intercept=-1024.0)
    vol = read_dicom_volume(tmp_path / "dcm")
    labels = _structures(vol.array.shape)
    out = write_rtstruct(tmp_path / "case.rtstruct.dcm", labels, vol.grid, vol.source_files, label_table(LABELS), ALGO)
    back = rtstruct_masks(tmp_path / "case.rtstruct.dcm", vol.array.shape, vol.affine)
    assert set(back) == {"kidney", "tumor", "empty organ"}
    for value, name in ((1, "kidney"), (2, "tumor")):
        assert dice(back[name], labels == value) >= 0.98, name
    assert not back["empty organ"].any()
    # each contour lies on the plane of the source image it references
    ds = pydicom.dcmread(tmp_path / "case.rtstruct.dcm")
    images = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(f) for f in series.files)}
    for roi in ds.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            image = images[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            normal = np.cross(np.asarray(image.ImageOrientationPatient[:3], float),
                              np.asarray(image.ImageOrientationPatient[3:], float))
            pts = np.asarray(contour.ContourData, float).reshape(-1, 3)
            assert np.allclose((pts - np.asarray(image.ImagePositionPatient, float)) @ normal, 0.0, atol=1e-3)
    src = pydicom.dcmread(series.files[0])
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.Manufacturer == "medpipe"
    assert "InstitutionName" not in ds
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["ORGAN", "", ""]
    assert [list(r.ROIDisplayColor) for r in ds.ROIContourSequence][:1] == [list(label_table(LABELS)[0].color)]
    assert out.extra["contours"] > 0
    errors = dciodvfy_errors(tmp_path / "case.rtstruct.dcm")
    assert not errors, errors


def test_rtstruct_contours_are_in_world_millimetres(tmp_path: Path) -> None:
    """A single voxel's contour is that voxel's centre in patient coordinates (non-square pixels catch a swap
    of the two PixelSpacing values)."""
    write_series(tmp_path / "dcm", rows=12, columns=16, pixel_spacing=(0.8, 0.6), intercept=-1024.0)
    vol = read_dicom_volume(tmp_path / "dcm")
    labels = np.zeros(vol.array.shape, np.uint8)
    labels[11, 3, 5] = 1
    write_rtstruct(tmp_path / "one.rtstruct.dcm", labels, vol.grid, vol.source_files,
                   label_table({0: "bg", 1: "dot"}), ALGO)
    ds = pydicom.dcmread(tmp_path / "one.rtstruct.dcm")
    point = np.asarray(ds.ROIContourSequence[0].ContourSequence[0].ContourData, float).reshape(-1, 3)[0]
    expected = (vol.affine @ np.array([11, 3, 5, 1.0]))[:3]
    assert np.allclose(point * LPS_TO_RAS, expected, atol=1e-3)


def test_rtstruct_off_grid_mask_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path / "dcm", intercept=-1024.0)
    vol = read_dicom_volume(tmp_path / "dcm")
    from medpipe.io.geometry import Grid

    affine = vol.grid.affine.copy()
    affine[:3, 3] += 0.5
    with pytest.raises(GeometryError):
        write_rtstruct(tmp_path / "x.rtstruct.dcm", np.zeros(vol.array.shape, np.uint8), Grid(vol.grid.shape, affine),
                       vol.source_files, label_table(LABELS), ALGO)
    assert not list(tmp_path.glob("*.dcm"))


@pytest.mark.realdata
@pytest.mark.slow
def test_real_jpeg2000_ct_organs_round_trip(tmp_path: Path) -> None:
    """31 TotalSegmentator organs of the real CT (holes and thin structures included): Dice >= 0.98 each."""
    import nibabel as nib

    from tests.conftest import SHARED_DATA

    root = SHARED_DATA / "dicom" / "ct-abdomen-jpeg2000"
    if not root.is_dir():
        pytest.skip("shared data not present")
    vol = read_dicom_volume(root / "series")
    ref = nib.load(str(root / "labels.nii.gz"))
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in vol.array.shape], indexing="ij"), -1).reshape(-1, 3)
    to_ref = np.linalg.inv(ref.affine) @ vol.affine
    src = np.rint(ijk @ to_ref[:3, :3].T + to_ref[:3, 3]).astype(int)
    labels = np.asarray(ref.dataobj)[tuple(src.T)].reshape(vol.array.shape).astype(np.uint8)
    names = {0: "background", **{int(v): f"organ{int(v)}" for v in np.unique(labels) if v}}
    write_rtstruct(tmp_path / "ct.rtstruct.dcm", labels, vol.grid, vol.source_files, label_table(names), ALGO)
    back = rtstruct_masks(tmp_path / "ct.rtstruct.dcm", vol.array.shape, vol.affine)
    scores = {name: dice(back[name], labels == value) for value, name in names.items() if value}
    assert len(scores) > 20 and min(scores.values()) >= 0.98, scores
    assert not dciodvfy_errors(tmp_path / "ct.rtstruct.dcm")
