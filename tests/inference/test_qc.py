"""Per-case QC flags on built cases: an empty prediction, a mask touching the border, many components, a volume
outside the training range; volumes in ml from the header; the training volume ranges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medpipe.inference.batch import run_case
from medpipe.inference.inputs import collect_inputs
from medpipe.inference.predictor import Predictor
from medpipe.inference.qc import CaseQC
from medpipe.training.volumes import volume_ranges
from tests.conftest import make_affine, save_nifti
from tests.inference_models import Pointwise, pointwise_set, tiny_cfg

AFFINE = make_affine((0, 1, 2), (1, -1, 1), (1.2, 1.2, 2.0), (0, 0, 10), (5.0, 7.0, -3.0))
SHAPE = (40, 40, 16)


def body() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = 40.0 + rng.normal(0, 3, SHAPE)
    image[:, 34:, :] = -1000.0  # air beside the body: looks like CT in HU
    return image.astype(np.float32)


def segment(tmp_path: Path, image: np.ndarray, *, threshold: float = 0.55, empty: bool = False,
            volumes: dict[str, list[float]] | None = None, **qc: object) -> tuple[dict, dict]:
    """Run one case through run_case with a pointwise model; returns (sidecar qc, CaseResult.qc)."""
    cfg = tiny_cfg(inference={"qc": {"expected_labels": [1], **qc}})
    path = save_nifti(tmp_path / "case.nii.gz", image, AFFINE, np.int16)
    seg = Predictor(pointwise_set(cfg, Pointwise(threshold, empty), volumes=volumes), "cpu")
    res = run_case(seg, collect_inputs([path], cfg.channels)[0], tmp_path / "out")
    assert res.status == "ok", res.error
    side = json.loads((tmp_path / "out" / "case.json").read_text())
    return side["qc"], res.qc or {}


def test_empty_prediction_is_flagged(tmp_path: Path) -> None:
    qc, row = segment(tmp_path, body(), empty=True)
    assert qc["review"] is True and row["review"] is True
    assert any("label 1 (organ): expected but empty" in r for r in qc["reasons"])
    assert not any("label 2" in r for r in qc["reasons"])  # not expected: empty is fine
    assert qc["labels"]["1"]["volume_ml"] == 0 and qc["labels"]["1"]["components"] == 0


def test_mask_touching_the_border_is_flagged(tmp_path: Path) -> None:
    image = body()
    image[0:6, 10:20, 4:10] = 200.0  # a block on the first i face
    qc, _ = segment(tmp_path, image, volumes={"1": [0.1, 10.0]})
    lab = qc["labels"]["1"]
    assert lab["touches_border"] is True and lab["components"] == 1
    assert qc["reasons"] == ["label 1 (organ): touches the field-of-view border"]
    assert lab["volume_ml"] == pytest.approx(6 * 10 * 6 * 1.2 * 1.2 * 2.0 / 1000, rel=0.35)
    assert lab["max_probability"] > 0.9 and lab["training_volume_ml"] == [0.1, 10.0]


def test_clean_case_needs_no_review_and_volume_is_exact(tmp_path: Path) -> None:
    image = body()
    image[15:25, 15:25, 5:11] = 200.0
    qc, row = segment(tmp_path, image, volumes={"1": [0.5, 5.0]})
    assert qc["review"] is False and qc["reasons"] == [] and row["review"] is False
    mask = np.asarray(__import__("nibabel").load(str(tmp_path / "out" / "case.nii.gz")).dataobj)
    assert qc["labels"]["1"]["volume_ml"] == pytest.approx((mask == 1).sum() * 1.2 * 1.2 * 2.0 / 1000, abs=1e-3)
    assert row["volume_ml_organ"] == qc["labels"]["1"]["volume_ml"]
    assert CaseQC.from_json(qc).to_json() == qc


def test_many_components_and_volume_outside_training_range(tmp_path: Path) -> None:
    image = body()
    for k in range(7):
        image[4 + 5 * k:6 + 5 * k, 18:21, 6:9] = 200.0
    qc, _ = segment(tmp_path, image, volumes={"1": [20.0, 40.0]})
    reasons = " | ".join(qc["reasons"])
    assert qc["labels"]["1"]["components"] == 7
    assert "7 connected components (more than 5)" in reasons
    assert "outside the training range [20.0, 40.0] ml" in reasons


def test_low_probability_and_high_uncertainty_thresholds(tmp_path: Path) -> None:
    image = body()
    image[15:25, 15:25, 5:11] = 115.0  # windowed 0.63: logit 1.6, p ~ 0.83
    qc, _ = segment(tmp_path, image, min_max_probability=0.9, max_mean_uncertainty=0.1)
    reasons = " | ".join(qc["reasons"])
    assert "maximum probability 0.8" in reasons and "below 0.9" in reasons
    assert "mean uncertainty" in reasons and qc["labels"]["1"]["mean_mutual_information"] == 0.0


def test_training_volume_ranges(tmp_path: Path) -> None:
    aff = make_affine(spacing=(1.0, 2.0, 2.5))  # 5 mm3 per voxel
    a, b = np.zeros((10, 10, 10), np.uint8), np.zeros((10, 10, 10), np.uint8)
    a[:2] = 1  # 200 voxels -> 1.0 ml
    b[:4] = 1  # 400 voxels -> 2.0 ml
    b[9, 9, 9] = 2  # 0.005 ml
    files = [save_nifti(tmp_path / "a.nii.gz", a, aff), save_nifti(tmp_path / "b.nii.gz", b, aff)]
    assert volume_ranges(files, [0, 1, 2, 3]) == {"1": [1.0, 2.0], "2": [0.005, 0.005]}
