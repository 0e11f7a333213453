"""Lesion tables: known answers on phantoms defined in world millimetres, on oblique anisotropic flipped grids."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from medpipe.errors import InputError
from medpipe.evaluation.lesions import (
    CSV_COLUMNS,
    LesionTable,
    lesion_table,
    max_diameter_mm,
    read_lesion_csv,
    write_lesion_csv,
)
from medpipe.io.geometry import Grid
from tests.conftest import make_affine

#: An oblique (rotated), anisotropic, flipped, permuted grid.
AFFINE = make_affine((2, 0, 1), (-1, 1, -1), (0.9, 1.3, 2.5), (8, -5, 12), (12.0, -40.0, 30.0))
SHAPE = (60, 48, 24)


def world_spheres(affine: np.ndarray, shape: tuple[int, int, int],
                  spheres: list[tuple[int, tuple[float, float, float], float]]) -> np.ndarray:
    """An integer mask: label ``v`` inside each (v, centre RAS mm, radius mm) sphere."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).reshape(3, -1)
    world = (affine[:3, :3] @ ijk + affine[:3, 3:4]).T
    mask = np.zeros(shape, np.uint8)
    for value, centre, radius in spheres:
        inside = np.linalg.norm(world - np.asarray(centre), axis=1) < radius
        mask[inside.reshape(shape)] = value
    return mask


def grid_centre(frac: tuple[float, float, float]) -> tuple[float, float, float]:
    ijk = np.asarray(frac) * (np.asarray(SHAPE) - 1)
    c = AFFINE[:3, :3] @ ijk + AFFINE[:3, 3]
    return (float(c[0]), float(c[1]), float(c[2]))


def test_two_lesion_phantom_volumes_and_centroids(tmp_path: Path) -> None:
    """Two spheres (r = 9 mm and 5 mm) of label 1 give two rows, largest first, with the volume of the voxel
    count times the voxel volume (and within 6 % of 4/3 pi r^3), the centroid within 0.5 mm of the sphere
    centre in RAS mm, a diameter close to 2r and a bounding box holding every voxel."""
    big, small = grid_centre((0.35, 0.4, 0.5)), grid_centre((0.7, 0.65, 0.5))
    mask = world_spheres(AFFINE, SHAPE, [(1, big, 9.0), (1, small, 5.0)])
    voxel_ml = 0.9 * 1.3 * 2.5 / 1000
    table = lesion_table(mask, Grid(SHAPE, AFFINE), case="c1", labels={0: "background", 1: "lesion"})
    assert [les.lesion for les in table.lesions] == [1, 2]
    for les, centre, radius in zip(table.lesions, (big, small), (9.0, 5.0), strict=True):
        assert les.label == 1 and les.label_name == "lesion"
        assert les.volume_ml == pytest.approx(les.voxels * voxel_ml, rel=1e-9)
        assert les.volume_ml == pytest.approx(4 / 3 * math.pi * radius**3 / 1000, rel=0.06)
        assert np.linalg.norm(np.subtract(les.centroid_ras_mm, centre)) < 0.5
        assert 2 * radius - 2.9 <= les.max_diameter_mm <= 2 * radius
        assert les.mean_probability is None
    # the two components partition the mask: counts add up, boxes hold them
    assert sum(les.voxels for les in table.lesions) == int((mask == 1).sum())
    first = table.lesions[0]
    box = mask[first.bbox_lo_vox[0]:first.bbox_hi_vox[0] + 1, first.bbox_lo_vox[1]:first.bbox_hi_vox[1] + 1,
               first.bbox_lo_vox[2]:first.bbox_hi_vox[2] + 1]
    assert int(box.sum()) >= first.voxels

    path = write_lesion_csv(tmp_path / "c1.lesions.csv", table)
    with path.open(newline="") as fh:  # read back with the standard library's reader
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 2
    assert float(rows[1]["volume_ml"]) == pytest.approx(table.lesions[1].volume_ml, abs=1e-6)
    assert float(rows[0]["centroid_s_mm"]) == pytest.approx(big[2], abs=0.5)
    assert rows[0]["mean_probability"] == ""
    assert read_lesion_csv(path) == rows
    assert LesionTable.from_json(table.to_json()) == table


def test_min_volume_labels_probabilities_and_summary() -> None:
    big, small = grid_centre((0.35, 0.4, 0.5)), grid_centre((0.7, 0.65, 0.5))
    mask = world_spheres(AFFINE, SHAPE, [(1, big, 9.0), (2, small, 5.0), (2, grid_centre((0.2, 0.8, 0.3)), 2.0)])
    probs = np.zeros((3, *SHAPE), np.float32)
    probs[1][mask == 1] = 0.8
    probs[2][mask == 2] = 0.6
    centre_vox = np.rint(np.linalg.solve(AFFINE[:3, :3], np.subtract(small, AFFINE[:3, 3]))).astype(int)
    probs[2][tuple(centre_vox)] = 0.95
    table = lesion_table(mask, Grid(SHAPE, AFFINE), probabilities=probs, min_volume_ml=0.2)
    assert [(les.label, les.lesion) for les in table.lesions] == [(1, 1), (2, 1)]
    assert table.removed == {2: 1}  # the 2 mm sphere (0.03 mL) is below 0.2 mL
    assert table.lesions[0].mean_probability == pytest.approx(0.8)
    assert table.lesions[1].max_probability == pytest.approx(0.95)
    s = table.summary("c.lesions.csv").to_json()
    assert s["min_volume_ml"] == 0.2 and s["labels"]["2"]["count"] == 1 and s["labels"]["2"]["removed_below_min"] == 1
    by_label = lesion_table(mask, Grid(SHAPE, AFFINE), probabilities={2: probs[2]}, connectivity=6)
    assert by_label.lesions[0].mean_probability is None and by_label.lesions[1].mean_probability is not None
    with pytest.raises(InputError, match="expected"):
        lesion_table(mask, Grid(SHAPE, AFFINE), probabilities={1: probs[1][:-1]})
    with pytest.raises(InputError, match="connectivity"):
        lesion_table(mask, Grid(SHAPE, AFFINE), connectivity=8)
    assert lesion_table(np.zeros(SHAPE, np.uint8), Grid(SHAPE, AFFINE)).lesions == ()


def test_max_diameter_known_answers() -> None:
    assert max_diameter_mm(np.zeros((1, 3))) == 0.0
    box = np.argwhere(np.ones((10, 7, 5), bool)).astype(float) * [1.0, 2.0, 3.0]
    assert max_diameter_mm(box) == pytest.approx(math.dist((0, 0, 0), (9, 12, 12)))
    flat = np.argwhere(np.ones((20, 20, 1), bool)).astype(float)  # coplanar: the hull is degenerate
    assert max_diameter_mm(flat) == pytest.approx(math.dist((0, 0), (19, 19)))


# ----- medpipe infer writes <case>.lesions.csv and records it in the sidecar ---------------------------------
def test_infer_writes_lesion_table_and_sidecar_entry(tmp_path: Path) -> None:
    import json

    import nibabel as nib
    from typer.testing import CliRunner

    from medpipe.cli import app
    from medpipe.config import config_from_dict
    from medpipe.models.checkpoint import save_checkpoint
    from medpipe.models.factory import build_model
    from tests.conftest import save_nifti, sphere_phantom

    cfg = config_from_dict({
        "labels": {0: "background", 1: "organ"},
        "transforms": {"spacing_mm": [2.0, 2.0, 2.5], "crop_foreground": False},
        "model": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
        "inference": {"roi_size_vox": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.0},
    })
    import torch

    torch.manual_seed(3)
    save_checkpoint(tmp_path / "best.pt", build_model(cfg), cfg)  # untrained: any mask will do
    aff = make_affine((2, 0, 1), (-1, 1, -1), (0.9, 1.3, 2.5), (8, -5, 12), (12.0, -40.0, 30.0))
    image, _ = sphere_phantom((40, 36, 16), aff)
    scan = save_nifti(tmp_path / "case_a.nii.gz", image, aff, np.int16)
    args = ["infer", str(tmp_path / "best.pt"), str(scan), "-o", str(tmp_path / "out"), "--device", "cpu",
            "--save-probabilities"]
    res = CliRunner().invoke(app, [*args, "--min-lesion-ml", "0.01"])
    assert res.exit_code == 0, res.output
    mask_img = nib.load(str(tmp_path / "out" / "case_a.nii.gz"))
    mask = np.asarray(mask_img.dataobj)
    # the lesions' probabilities are those of the saved probability map (frame = label value), on the mask grid
    probs = np.moveaxis(np.asarray(nib.load(str(tmp_path / "out" / "case_a_probabilities.nii.gz")).get_fdata(),
                                   dtype=np.float32), -1, 0)
    expected = lesion_table(mask, Grid(mask.shape, mask_img.affine), case="case_a", labels=cfg.labels,
                            probabilities=probs, min_volume_ml=0.01)
    assert (tmp_path / "out" / "case_a.lesions.csv").read_text() == expected.to_csv()
    rows = read_lesion_csv(tmp_path / "out" / "case_a.lesions.csv")
    assert rows and all(row["mean_probability"] and row["max_probability"] for row in rows)  # filled
    for row in rows:
        mean_p, max_p = float(row["mean_probability"]), float(row["max_probability"])
        assert 0.0 <= mean_p <= max_p <= 1.0
        assert mean_p >= 0.5 - 1 / 255  # two classes, the mask is their argmax: every voxel of it has p >= 0.5
    side = json.loads((tmp_path / "out" / "case_a.json").read_text())
    assert side["lesions"]["file"] == "case_a.lesions.csv" and side["lesions"]["min_volume_ml"] == 0.01
    assert side["lesions"]["labels"]["1"]["count"] == len(expected.lesions) > 0
    assert "lesions" in res.output  # the terminal table has a lesions column
    # a re-run skips the case; a lost lesion table makes it run again
    (tmp_path / "out" / "case_a.lesions.csv").unlink()
    res = CliRunner().invoke(app, [*args, "--min-lesion-ml", "0.01"])
    assert res.exit_code == 0 and (tmp_path / "out" / "case_a.lesions.csv").is_file()
    assert "skipped" in CliRunner().invoke(app, [*args, "--min-lesion-ml", "0.01"]).output
