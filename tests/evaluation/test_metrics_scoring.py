"""Overlap, empty-mask policy, regions/presets and BraTS-2023 lesion-wise scoring on hand-built label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medpipe.errors import ConfigError, InputError
from medpipe.evaluation.metrics import get_preset, score_arrays, score_lesions
from medpipe.evaluation.metrics.empty import BRATS_POLICY, EmptyPolicy
from medpipe.evaluation.metrics.regions import BRATS_2023, BRATS_LEGACY, KITS_REGIONS, Region, tolerance_for
from medpipe.evaluation.metrics.surface import surface_distances
from medpipe.evaluation.summary import summarize


def test_overlap_and_volumes_known_answer() -> None:
    ref, pred = np.zeros((6, 6, 6), np.int32), np.zeros((6, 6, 6), np.int32)
    ref[1:3, 1:3, 1:3] = 1  # 8 voxels
    pred[1:3, 1:3, 1:2] = 1  # 4 voxels, all inside the reference
    (row,) = score_arrays(pred, ref, (1.0, 2.0, 3.0), {1: "organ"}, metrics=("dice", "iou", "volume", "confusion"))
    assert row.dice == pytest.approx(2 * 4 / 12)
    assert row.iou == pytest.approx(0.5)
    assert (row.tp_vox, row.fp_vox, row.fn_vox) == (4, 0, 4)
    assert row.ref_volume_ml == pytest.approx(8 * 6 / 1000)
    assert row.volume_diff_ml == pytest.approx(-4 * 6 / 1000)
    assert row.hd95_mm is None and row.nsd is None  # not asked for: the fast validation path


def _maps() -> tuple[np.ndarray, np.ndarray]:
    ref, pred = np.zeros((12, 12, 12), np.int32), np.zeros((12, 12, 12), np.int32)
    ref[2:6, 2:6, 2:6] = 1
    pred[2:6, 2:6, 3:7] = 1
    pred[8:10, 8:10, 8:10] = 2  # label 2 only predicted: reference empty
    ref[0:2, 9:11, 0:2] = 4  # label 4 only in the reference: prediction empty
    return ref, pred


def test_empty_cases_follow_the_default_policy() -> None:
    ref, pred = _maps()
    rows = score_arrays(pred, ref, (1.0, 1.0, 1.0), {1: "a", 2: "b", 3: "c", 4: "d"}, metrics=("all",))
    by = {r.label: r for r in rows}
    assert [by[k].empty for k in (1, 2, 3, 4)] == ["none", "ref", "both", "pred"]
    assert by[1].dice == pytest.approx(2 * 48 / 128) and by[1].hd95_mm == pytest.approx(1.0)
    assert by[3].dice == 1.0 and by[3].nsd == 1.0 and by[3].hd95_mm == 0.0 and by[3].assd_mm == 0.0
    for k in (2, 4):
        assert by[k].dice == 0.0 and by[k].iou == 0.0 and by[k].nsd == 0.0
        assert math.isnan(by[k].hd95_mm) and math.isnan(by[k].hd_mm)  # type: ignore[arg-type]
    summary = summarize(rows)
    assert summary[2].empty == {"none": 0, "both": 0, "ref": 1, "pred": 0}
    assert summary[2].metrics["hd95_mm"].n_undefined == 1
    assert summary[2].metrics["hd95_mm"].mean is None


def test_brats_policy_penalises_and_custom_policy_applies() -> None:
    ref, pred = _maps()
    rows = score_arrays(pred, ref, (1.0, 1.0, 1.0), {2: "b"}, metrics=("hd95", "dice"), policy=BRATS_POLICY)
    assert rows[0].hd95_mm == 374.0
    nan_both = EmptyPolicy(name="strict", both_empty_overlap=math.nan)
    (row,) = score_arrays(pred, ref, (1.0, 1.0, 1.0), {3: "c"}, metrics=("dice",), policy=nan_both)
    assert math.isnan(row.dice)  # type: ignore[arg-type]
    assert any("undefined" in line for line in nan_both.describe())


def test_brats_regions_for_both_label_conventions() -> None:
    preset = get_preset("brats")
    assert preset.regions({0, 1, 2, 3}, None) == list(BRATS_2023)
    assert preset.regions({0, 1, 2, 4}, None) == list(BRATS_LEGACY)
    with pytest.raises(InputError, match="mix"):
        preset.regions({1, 3, 4}, None, path="case.nii.gz")
    ref = np.zeros((10, 10, 10), np.int32)
    ref[2:8, 2:8, 2:8] = 2  # edema
    ref[3:7, 3:7, 3:7] = 1  # necrosis
    ref[4:6, 4:6, 4:6] = 4  # enhancing (old convention)
    rows = score_arrays(ref, ref, (1.0, 1.0, 1.0), preset.regions(set(np.unique(ref)), None), metrics=("volume",))
    assert [(r.label_name, round(r.ref_volume_ml * 1000)) for r in rows] == [("WT", 216), ("TC", 64), ("ET", 8)]


def test_kits_regions_and_tolerances() -> None:
    assert [r.values for r in KITS_REGIONS] == [(1, 2, 3), (2, 3), (2,)]
    assert tolerance_for(KITS_REGIONS[0], None) == pytest.approx(1.0330772532390826)
    assert tolerance_for(KITS_REGIONS[0], 2.0) == 2.0
    assert tolerance_for(Region(1, "x", (1,)), None) == 3.0
    with pytest.raises(ConfigError, match="label 1"):
        tolerance_for(Region(1, "x", (1,)), {2: 1.0})
    with pytest.raises(ConfigError, match="unknown evaluation preset"):
        get_preset("nnunet")


def _cube(m: np.ndarray, lo: tuple[int, int, int], size: int) -> None:
    m[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = True


def test_lesion_wise_brats_rules_known_answer() -> None:
    ref, pred = np.zeros((60, 40, 40), bool), np.zeros((60, 40, 40), bool)
    _cube(ref, (5, 5, 5), 5)  # lesion A, 125 mm^3: found (prediction shifted by one voxel)
    _cube(pred, (6, 5, 5), 5)
    _cube(ref, (30, 5, 5), 4)  # lesion B, 64 mm^3: missed
    _cube(ref, (45, 30, 30), 3)  # lesion C, 27 mm^3 <= 50: not scored, absorbs the prediction on it
    _cube(pred, (45, 30, 30), 3)
    _cube(pred, (20, 30, 30), 3)  # a false-positive lesion far from everything
    score = score_lesions(ref, pred, (1.0, 1.0, 1.0))
    assert (score.n_ref, score.tp, score.fn, score.fp) == (2, 1, 1, 1)
    assert score.sensitivity == pytest.approx(0.5)
    dice_a = 2 * 100 / 250
    assert score.dice == pytest.approx(dice_a / 3)
    a_ref, a_pred = np.zeros_like(ref), np.zeros_like(pred)
    _cube(a_ref, (5, 5, 5), 5)
    _cube(a_pred, (6, 5, 5), 5)
    hd_a = surface_distances(a_ref, a_pred, (1.0, 1.0, 1.0)).hd_percentile(95)
    assert hd_a == pytest.approx(1.0)
    assert score.hd95_mm == pytest.approx((hd_a + 2 * 374.0) / 3)
    assert [m.counted for m in score.matches] == [True, True, False]


def test_lesions_closer_than_the_dilation_are_merged() -> None:
    ref, pred = np.zeros((30, 20, 20), bool), np.zeros((30, 20, 20), bool)
    _cube(ref, (5, 5, 5), 4)
    _cube(ref, (11, 5, 5), 4)  # 2 empty voxels between: merged by 3 dilations
    _cube(pred, (5, 5, 5), 4)
    score = score_lesions(ref, pred, (1.0, 1.0, 1.0))
    assert (score.n_ref, score.tp, score.fn, score.fp) == (1, 1, 0, 0)
    assert score.dice == pytest.approx(2 * 64 / (128 + 64))


def test_no_lesions_anywhere_scores_perfect() -> None:
    empty = np.zeros((8, 8, 8), bool)
    score = score_lesions(empty, empty, (1.0, 1.0, 1.0))
    assert (score.dice, score.hd95_mm, score.fp) == (1.0, 0.0, 0)
    assert math.isnan(score.sensitivity)
