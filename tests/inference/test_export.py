"""Geometry round trips: load -> preprocess -> export -> save lands on the source grid, for all 48 axis
permutations/flips, oblique rotations and anisotropic spacing; and the object lands where it was in the world."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medpipe.config import config_from_dict
from medpipe.errors import GeometryError
from medpipe.inference.export import labels_on_grid, write_mask
from medpipe.io.geometry import Grid, check_on_grid
from medpipe.transforms import preprocess
from tests.conftest import all_orientations, make_affine, sphere_phantom

CFG = config_from_dict({
    "labels": {0: "background", 1: "organ", 2: "core"},
    "transforms": {"spacing_mm": [1.5, 1.5, 2.0], "hu_window": [-200.0, 300.0]},
})


def _world_centroid(labels: np.ndarray, affine: np.ndarray, value: int) -> np.ndarray:
    ijk = np.argwhere(labels >= value).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def round_trip(tmp_path: Path, affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Preprocess image+label like inference does, use the network-space one-hot label as 'probabilities',
    export back onto the source grid and write the mask. Returns (source labels, re-read mask)."""
    image, labels = sphere_phantom(shape, affine)
    meta = {"affine": torch.as_tensor(affine)}
    data = {"image": MetaTensor(torch.from_numpy(image)[None], meta=dict(meta)),
            "label": MetaTensor(torch.from_numpy(labels.astype(np.float32))[None], meta=dict(meta))}
    net = preprocess(CFG, with_label=True, load=False)(data)
    onehot = torch.cat([(net["label"] == k).float() for k in range(3)])
    probs = MetaTensor(onehot, meta={"affine": net["image"].affine})
    grid = Grid(shape, affine)
    mask = labels_on_grid(probs, grid)
    path = write_mask(tmp_path / "mask.nii.gz", mask, grid)
    check_on_grid(path, grid)
    return labels, np.asarray(nib.load(str(path)).dataobj)


@pytest.mark.parametrize(("perm", "flips"), all_orientations())
def test_all_48_orientations_land_on_source_grid(tmp_path: Path, perm: tuple, flips: tuple) -> None:
    affine = make_affine(perm, flips, spacing=(1.2, 0.9, 2.4), origin=(-30.0, 12.5, 47.0))
    shape = (26, 30, 14)
    labels, back = round_trip(tmp_path, affine, shape)
    img = nib.load(str(tmp_path / "mask.nii.gz"))
    assert img.shape == shape and np.allclose(img.affine, affine, atol=1e-4)
    assert img.get_data_dtype() == np.uint8
    a, b = labels >= 1, back >= 1
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9
    shift = np.linalg.norm(_world_centroid(back, affine, 1) - _world_centroid(labels, affine, 1))
    assert shift < 0.75, f"object moved {shift:.2f} mm"


@pytest.mark.parametrize("rot", [(17.0, -9.0, 25.0), (0.0, 35.0, 0.0), (-20.0, 5.0, -60.0)])
def test_oblique_anisotropic_round_trip(tmp_path: Path, rot: tuple[float, float, float]) -> None:
    affine = make_affine((2, 0, 1), (-1, 1, -1), spacing=(0.8, 1.1, 2.9), rot_deg=rot, origin=(10.0, -20.0, 33.0))
    labels, back = round_trip(tmp_path, affine, (36, 30, 12))
    for value in (1, 2):
        a, b = labels >= value, back >= value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.8
    shift = np.linalg.norm(_world_centroid(back, affine, 1) - _world_centroid(labels, affine, 1))
    assert shift < 0.75


def test_labels_on_grid_uses_bounded_slabs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medpipe.inference.export as export

    affine = make_affine(spacing=(1.0, 1.0, 2.0))
    _, full = round_trip(tmp_path, affine, (24, 24, 16))
    monkeypatch.setattr(export, "SLAB_BUDGET_VALUES", 3 * 24 * 24 * 3)  # 3 slices per slab
    _, slabbed = round_trip(tmp_path, affine, (24, 24, 16))
    assert np.array_equal(full, slabbed)


def test_contract_rejects_a_mask_off_grid(tmp_path: Path) -> None:
    affine = make_affine(spacing=(1.0, 1.0, 2.0))
    grid = Grid((8, 8, 4), affine)
    moved = affine.copy()
    moved[0, 3] += 0.01
    path = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), moved), str(path))
    with pytest.raises(GeometryError, match="affine differs"):
        check_on_grid(path, grid)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), affine), str(path))
    with pytest.raises(GeometryError, match="dtype"):
        check_on_grid(path, grid)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 5), np.uint8), affine), str(path))
    with pytest.raises(GeometryError, match="shape"):
        check_on_grid(path, grid)


def test_write_mask_is_atomic_on_contract_failure(tmp_path: Path) -> None:
    grid = Grid((8, 8, 4), make_affine())
    with pytest.raises(GeometryError):
        write_mask(tmp_path / "m.nii.gz", np.zeros((8, 8, 5), np.uint8), grid)
    assert list(tmp_path.iterdir()) == []


def test_foreground_box_gives_the_same_mask_as_the_full_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medpipe.inference.export as export

    affine = make_affine((1, 0, 2), (-1, 1, -1), spacing=(0.7, 0.9, 2.2), rot_deg=(5.0, -12.0, 20.0),
                         origin=(3.0, 4.0, -5.0))
    shape = (48, 40, 20)
    image, labels = sphere_phantom(shape, affine, radii_mm=(7.0, 3.0))
    meta = {"affine": torch.as_tensor(affine)}
    net = preprocess(CFG, with_label=True, load=False)({
        "image": MetaTensor(torch.from_numpy(image)[None], meta=dict(meta)),
        "label": MetaTensor(torch.from_numpy(labels.astype(np.float32))[None], meta=dict(meta))})
    rng = np.random.default_rng(1)
    soft = torch.cat([(net["label"] == k).float() for k in range(3)]) + torch.from_numpy(
        rng.uniform(0, 0.6, (3, *net["label"].shape[1:])).astype(np.float32))
    probs = MetaTensor(soft / soft.sum(0, keepdim=True), meta={"affine": net["image"].affine})
    grid = Grid(shape, affine)
    boxed = labels_on_grid(probs, grid)
    monkeypatch.setattr(export, "foreground_box", lambda p, s: (np.zeros(3, int), np.asarray(s.shape)))
    full = labels_on_grid(probs, grid)
    assert np.array_equal(boxed, full)
    assert (full > 0).sum() > 0
