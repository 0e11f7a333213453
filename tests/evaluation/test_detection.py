"""Lesion detection: matching rules, counts, and a FROC on a built set of three scans against a hand count."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medpipe.cli import app
from medpipe.errors import ConfigError, InputError
from medpipe.evaluation.detection import (
    FROC_RATES,
    SCORE_PROBABILITY,
    SCORE_VOLUME,
    DetectionResult,
    LabelDetection,
    MatchRule,
    detect_case,
    froc_at,
    froc_curve,
    summarize_detection,
)
from medpipe.evaluation.evaluate import evaluate
from medpipe.evaluation.lesions import lesion_table, write_lesion_csv
from medpipe.evaluation.result import EvaluationSummary, json_safe
from medpipe.io.geometry import Grid
from tests.conftest import make_affine, save_nifti

AFFINE = make_affine((0, 1, 2), (1, -1, 1), (1.0, 1.5, 2.0), (0, 0, 10), (5.0, -20.0, 40.0))
SHAPE = (40, 30, 20)
GRID = Grid(SHAPE, AFFINE)


def cube(mask: np.ndarray, at: tuple[int, int, int], size: int = 4, value: int = 1) -> None:
    i, j, k = at
    mask[i:i + size, j:j + size, k:k + size] = value


def test_overlap_rule_iou_threshold_and_one_to_one() -> None:
    ref, pred = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    cube(ref, (5, 5, 5))
    cube(pred, (7, 5, 5))  # shifted 2 voxels: intersection 32, union 96, IoU 1/3
    rows = detect_case("c", pred, ref, GRID, 1, "x", MatchRule("overlap", iou=0.3))
    assert [(r.kind, r.status) for r in rows] == [("pred", "TP"), ("ref", "TP")]
    assert rows[0].iou == pytest.approx(1 / 3)
    rows = detect_case("c", pred, ref, GRID, 1, "x", MatchRule("overlap", iou=0.4))
    assert [r.status for r in rows] == ["FP", "FN"]
    pred2 = pred.copy()
    cube(pred2, (3, 5, 5), size=2)  # a second, smaller prediction on the same reference lesion (IoU 8/64)
    rows = detect_case("c", pred2, ref, GRID, 1, "x", MatchRule("overlap", iou=0.1))
    assert sorted(r.status for r in rows if r.kind == "pred") == ["FP", "TP"]  # one-to-one: the extra is a FP


def test_centroid_rule_distance_in_mm_on_an_anisotropic_grid() -> None:
    ref, pred = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    cube(ref, (5, 5, 5))
    cube(pred, (5, 5, 9))  # 4 voxels along k: 4 x 2.0 mm = 8 mm (no overlap)
    rows = detect_case("c", pred, ref, GRID, 1, "x", MatchRule("centroid", distance_mm=8.0))
    assert rows[0].status == "TP" and rows[0].distance_mm == pytest.approx(8.0)
    assert detect_case("c", pred, ref, GRID, 1, "x", MatchRule("centroid", distance_mm=7.9))[0].status == "FP"
    assert detect_case("c", pred, ref, GRID, 1, "x", MatchRule("overlap", iou=0.0))[0].status == "FP"
    with pytest.raises(ConfigError):
        MatchRule("nearest")  # type: ignore[arg-type]


def test_froc_curve_and_operating_points_by_hand() -> None:
    # scores 0.95 FP, 0.9 TP, 0.8 FP, 0.6 TP, 0.5 FP, 0.3 TP, 0.2 FP; 3 reference lesions in 3 scans
    curve = froc_curve([0.9, 0.8, 0.3, 0.95, 0.6, 0.5, 0.2], [True, False, True, False, True, False, False], 3, 3)
    third = 1 / 3
    expected = [(0, 0), (third, 0), (third, third), (2 * third, third), (2 * third, 2 * third), (1, 2 * third),
                (1, 1), (4 * third, 1)]
    assert [v for point in curve for v in point] == pytest.approx([v for point in expected for v in point])
    assert [s for _, s in froc_at(curve)] == pytest.approx([0, 0, third, 1, 1, 1, 1])
    tied = froc_curve([0.5, 0.5], [True, False], 1, 1)  # equal scores enter together
    assert tied == ((0.0, 0.0), (1.0, 1.0))


def build_set(root: Path, with_probabilities: bool) -> tuple[Path, Path]:
    """Three scans, label 1. Scan a: reference R1, R2; predictions P1 on R1 (0.9), P2 alone (0.8), P3 on R2 (0.3).
    Scan b: reference R3; P4 alone (0.95), P5 on R3 (0.6). Scan c: no reference; P6 (0.5), P7 (0.2) alone.
    Lesion sizes (volume scores) are chosen so that the volume ranking differs from the probability ranking."""
    spec = {"a": ([(2, 2, 2), (20, 2, 2)], [((2, 2, 2), 4, 0.9), ((10, 15, 10), 6, 0.8), ((20, 2, 2), 3, 0.3)]),
            "b": ([(2, 2, 2)], [((30, 20, 10), 2, 0.95), ((2, 2, 2), 5, 0.6)]),
            "c": ([], [((10, 10, 10), 3, 0.5), ((25, 20, 5), 7, 0.2)])}
    (root / "pred").mkdir(parents=True)
    (root / "ref").mkdir()
    for case, (refs, preds) in spec.items():
        ref, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
        probs = np.zeros((2, *SHAPE), np.float32)
        for at in refs:
            cube(ref, at)
        for at, size, score in preds:
            cube(pred, at, size)
            probs[1, at[0]:at[0] + size, at[1]:at[1] + size, at[2]:at[2] + size] = score
        save_nifti(root / "ref" / f"{case}.nii.gz", ref, AFFINE)
        save_nifti(root / "pred" / f"{case}.nii.gz", pred, AFFINE)
        table = lesion_table(pred, GRID, case=case, labels={1: "nodule"},
                             probabilities=probs if with_probabilities else None)
        write_lesion_csv(root / "pred" / f"{case}.lesions.csv", table)
    return root / "pred", root / "ref"


def test_froc_on_a_built_set_matches_the_hand_count(tmp_path: Path) -> None:
    pred, ref = build_set(tmp_path, with_probabilities=True)
    res = evaluate(pred, ref, tmp_path / "report", labels={1: "nodule"}, detection=MatchRule("overlap", iou=0.1))
    det = res.detection
    assert det is not None and det.score == SCORE_PROBABILITY
    (d,) = det.labels
    assert (d.n_cases, d.n_ref, d.n_pred, d.tp, d.fp, d.fn) == (3, 3, 7, 3, 4, 0)
    assert (d.sensitivity, d.precision, d.f1) == pytest.approx((1.0, 3 / 7, 0.6))
    # hand count (see test_froc_curve_and_operating_points_by_hand): 0, 0, 1/3, 1, 1, 1, 1 at 1/8 ... 8 FP/scan
    assert [r for r, _ in d.froc] == list(FROC_RATES)
    assert [s for _, s in d.froc] == pytest.approx([0, 0, 1 / 3, 1, 1, 1, 1])
    assert d.cpm == pytest.approx((1 / 3 + 4) / 7)
    rows = list(csv.DictReader((tmp_path / "report" / "detection.csv").open()))
    assert len(rows) == 10 and sorted(r["status"] for r in rows if r["kind"] == "ref") == ["TP", "TP", "TP"]
    assert {float(r["score"]) for r in rows if r["kind"] == "pred"} == {0.95, 0.9, 0.8, 0.6, 0.5, 0.3, 0.2}
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["detection"]["labels"]["1"]["tp"] == 3 and summary["detection"]["rule"]["kind"] == "overlap"
    back = EvaluationSummary.from_json(summary)  # the detection block is a typed record, not a loose dict
    assert back.to_json() == summary and back.detection is not None
    assert (back.detection.rule, back.detection.score, back.detection.labels) == (det.rule, det.score, det.labels)
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Lesion detection" in page and 'alt="FROC curve"' in page and "IoU &gt; 0.1" in page


def test_without_probabilities_the_score_is_the_volume_and_stated(tmp_path: Path) -> None:
    pred, ref = build_set(tmp_path, with_probabilities=False)
    res = evaluate(pred, ref, None, labels={1: "nodule"}, detection=MatchRule("centroid", distance_mm=3.0))
    assert res.detection is not None and res.detection.score == SCORE_VOLUME
    (d,) = res.detection.labels
    # volume ranking (voxels 343 FP, 216 FP, 125 TP, 64 TP, then 27 TP and 27 FP tied, 8 FP): points (0, 0),
    # (1/3, 0), (2/3, 0), (2/3, 1/3), (2/3, 2/3), (1, 1), (4/3, 1)
    assert (d.tp, d.fp, d.fn) == (3, 4, 0)
    assert [s for _, s in d.froc] == pytest.approx([0, 0, 0, 1, 1, 1, 1])
    assert [v for point in d.curve for v in point] == pytest.approx(
        [0, 0, 1 / 3, 0, 2 / 3, 0, 2 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1, 4 / 3, 1])
    empty = summarize_detection([], 2, MatchRule(), SCORE_VOLUME)
    assert empty.labels == ()


def test_cli_detection_flags_and_lesion_mode_still_work(tmp_path: Path) -> None:
    pred, ref = build_set(tmp_path, with_probabilities=True)
    res = CliRunner().invoke(app, ["evaluate", str(pred), str(ref), "-o", str(tmp_path / "r"), "--detection",
                                   "--match", "centroid", "--distance-mm", "5", "--lesions"])
    assert res.exit_code == 0, res.output
    assert "Lesion detection" in res.output and "centroid distance <= 5 mm" in res.output
    assert (tmp_path / "r" / "lesions.csv").is_file() and (tmp_path / "r" / "detection.csv").is_file()
    bad = CliRunner().invoke(app, ["evaluate", str(pred), str(ref), "-o", str(tmp_path / "r2"), "--detection",
                                   "--match", "nearest"])
    assert bad.exit_code == 1 and "overlap or centroid" in bad.output
    assert not math.isnan(json.loads((tmp_path / "r" / "summary.json").read_text())["detection"]["labels"]["1"]["cpm"])


def test_detection_record_reads_back_undefined_ratios_and_refuses_another_version() -> None:
    none = LabelDetection(2, "cyst", 3, 0, 1, 0, 1, 0, math.nan, 0.0, math.nan,
                          tuple((r, math.nan) for r in FROC_RATES), math.nan, ((0.0, math.nan), (1 / 3, math.nan)))
    det = DetectionResult(MatchRule("centroid", distance_mm=4.0, min_volume_ml=0.5), SCORE_VOLUME, (none,), ())
    doc = json.loads(json.dumps(json_safe(det.to_json())))  # as summary.json holds it: NaN written as null
    back = DetectionResult.from_json(doc)
    assert back.rule == det.rule and back.score == SCORE_VOLUME and back.lesions == ()
    (label,) = back.labels
    assert math.isnan(label.sensitivity) and math.isnan(label.cpm) and label.precision == 0.0
    assert math.isnan(label.froc[0][1]) and label.curve[1][0] == pytest.approx(1 / 3)
    assert json_safe(back.to_json()) == doc
    with pytest.raises(InputError, match="format version 99"):
        DetectionResult.from_json({**doc, "format_version": 99})
