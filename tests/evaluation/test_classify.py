"""``evaluate_classification``: predictions.csv + case,label truth -> summary.json, cases.csv, roc.png,
confusion.png, report.html, on built predictions with known answers, and every refused input."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from medpipe.errors import ConfigError, InputError
from medpipe.evaluation.classify import evaluate_classification
from medpipe.evaluation.result import ClassificationSummary

# Six cases by hand. "present" scores of the positives (c4 .55, c5 .80, c6 .35) against the negatives (c1 .10,
# c2 .40, c3 .70): .55 beats 2, .80 beats 3, .35 beats 1 -> AUC = 6/9. Argmax: c3 is a false positive, c6 a false
# negative -> confusion [[2, 1], [1, 2]], accuracy 4/6, sensitivity = specificity = 2/3.
HAND = [("c1", 0.10, "absent"), ("c2", 0.40, "absent"), ("c3", 0.70, "absent"),
        ("c4", 0.55, "present"), ("c5", 0.80, "present"), ("c6", 0.35, "present")]


def write_predictions(folder: Path, rows: list[tuple[str, list[float]]], classes: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["case,predicted," + ",".join(f"prob_{c}" for c in classes)]
    lines += [f"{case},{classes[int(np.argmax(p))]}," + ",".join(f"{v:.6f}" for v in p) for case, p in rows]
    (folder / "predictions.csv").write_text("\n".join(lines) + "\n")
    return folder / "predictions.csv"


def write_truth(path: Path, rows: list[tuple[str, object]], header: str = "case,label") -> Path:
    path.write_text("\n".join([header, *(f"{c},{label}" for c, label in rows)]) + "\n")
    return path


def hand_case(tmp_path: Path) -> tuple[Path, Path]:
    pred = write_predictions(tmp_path / "pred", [(c, [1 - p, p]) for c, p, _ in HAND], ["absent", "present"])
    truth = write_truth(tmp_path / "truth.csv", [(c, label) for c, _, label in HAND])
    return pred, truth


def test_hand_computed_six_cases(tmp_path: Path) -> None:
    pred, truth = hand_case(tmp_path)
    s = evaluate_classification(pred.parent, truth, tmp_path / "out", n_bootstrap=200)
    m = s.metrics
    assert m.auc == pytest.approx(6 / 9)
    assert m.confusion == ((2, 1), (1, 2))
    assert (m.accuracy, m.balanced_accuracy) == pytest.approx((4 / 6, 2 / 3))
    assert (m.per_class[1].sensitivity, m.per_class[1].specificity) == pytest.approx((2 / 3, 2 / 3))
    assert s.cases == tuple(f"c{i}" for i in range(1, 7)) and s.missing_predictions == ()
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "cases.csv").read_text())))
    assert [r["case"] for r in rows if r["correct"] == "false"] == ["c3", "c6"]
    assert rows[2] == {"case": "c3", "truth": "absent", "predicted": "present", "correct": "false",
                       "prob_absent": "0.300000", "prob_present": "0.700000"}
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["task"] == "classification" and doc["n_cases"] == 6
    assert doc["metrics"]["auc"] == pytest.approx(6 / 9) and doc["settings"]["n_bootstrap"] == 200


def test_perfect_classifier_three_classes_and_summary_round_trip(tmp_path: Path) -> None:
    classes = ["normal", "benign", "malignant"]
    rng = np.random.default_rng(0)
    rows, truth = [], []
    for i in range(12):
        k = i % 3
        p = rng.uniform(0, 0.2, 3)
        p[k] = 1.0
        rows.append((f"case{i:02d}", list(p / p.sum())))
        truth.append((f"case{i:02d}", classes[k]))
    pred = write_predictions(tmp_path / "pred", rows, classes)
    s = evaluate_classification(pred, write_truth(tmp_path / "t.csv", truth), tmp_path / "out", n_bootstrap=100)
    assert (s.metrics.accuracy, s.metrics.balanced_accuracy, s.metrics.auc) == (1.0, 1.0, 1.0)
    assert s.metrics.auc_ci == (1.0, 1.0)
    assert all(c.auc == 1.0 and c.sensitivity == 1.0 and c.specificity == 1.0 for c in s.metrics.per_class)
    assert s.metrics.confusion == ((4, 0, 0), (0, 4, 0), (0, 0, 4))
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert ClassificationSummary.from_json(doc) == s


def test_truth_by_index_equals_truth_by_name_and_classes_name_numbered_columns(tmp_path: Path) -> None:
    pred, truth = hand_case(tmp_path)
    by_index = write_truth(tmp_path / "idx.csv", [(c, int(label == "present")) for c, _, label in HAND])
    a = evaluate_classification(pred, truth, tmp_path / "a", n_bootstrap=50)
    b = evaluate_classification(pred, by_index, tmp_path / "b", n_bootstrap=50)
    assert a.metrics == b.metrics
    numbered = write_predictions(tmp_path / "num", [(c, [1 - p, p]) for c, p, _ in HAND], ["0", "1"])
    c = evaluate_classification(numbered, truth, tmp_path / "c", classes=["absent", "present"], n_bootstrap=50)
    assert c.metrics == a.metrics
    with pytest.raises(ConfigError, match="do not match"):
        evaluate_classification(pred, truth, tmp_path / "d", classes=["no", "yes"])


def test_missing_cases(tmp_path: Path) -> None:
    pred, _ = hand_case(tmp_path)
    more = write_truth(tmp_path / "more.csv", [(c, label) for c, _, label in HAND] + [("c7", "present")])
    s = evaluate_classification(pred, more, tmp_path / "out", n_bootstrap=20)
    assert s.missing_predictions == ("c7",) and s.metrics.n == 6  # listed, not scored (as segmentation)
    assert "c7" in (tmp_path / "out" / "report.html").read_text()
    fewer = write_truth(tmp_path / "fewer.csv", [(c, label) for c, _, label in HAND[:5]])
    with pytest.raises(InputError, match="prediction without a truth label: c6") as err:
        evaluate_classification(pred, fewer, tmp_path / "no")
    assert str(pred) in str(err.value)
    assert not (tmp_path / "no" / "summary.json").exists()


@pytest.mark.parametrize(("row", "expected"), [
    ("c2,absent,0.7,0.5", "line 3 (case 'c2'): probabilities sum to 1.2"),
    ("c2,present,-0.2,1.2", "must lie in [0, 1], got absent=-0.2, present=1.2"),
    ("c2,absent,nan,0.5", "non-finite probability (absent=nan, present=0.5)"),
    ("c2,absent,high,low", "not a number: high, low"),
    ("c2,present,0.8,0.2", "predicted 'present' but class 'absent' has the highest probability"),
    ("c2,maybe,0.8,0.2", "predicted class 'maybe' is none of"),
    ("c2,absent,0.8", "line 3: 3 cells, expected 4"),
    ("c1,absent,0.8,0.2", "case 'c1' appears twice"),
])
def test_bad_prediction_rows_are_refused_naming_file_line_and_values(tmp_path: Path, row: str,
                                                                     expected: str) -> None:
    pred = tmp_path / "predictions.csv"
    pred.write_text(f"case,predicted,prob_absent,prob_present\nc1,absent,0.9,0.1\n{row}\n")
    truth = write_truth(tmp_path / "t.csv", [("c1", "absent"), ("c2", "present")])
    with pytest.raises(InputError) as err:
        evaluate_classification(pred, truth, tmp_path / "out")
    assert expected in str(err.value) and str(pred) in str(err.value)


def test_bad_truth_and_headers_are_refused(tmp_path: Path) -> None:
    pred, _ = hand_case(tmp_path)
    cases = [(c, label) for c, _, label in HAND]
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("".join(f"{c},{label}\n" for c, label in cases))
    with pytest.raises(InputError, match="not a header naming the columns case and label"):
        evaluate_classification(pred, headerless, tmp_path / "o")
    with pytest.raises(InputError, match=r"line 2 \(case 'c1'\): label 'tumour' is neither a class name nor"):
        evaluate_classification(pred, write_truth(tmp_path / "u.csv", [("c1", "tumour"), *cases[1:]]), tmp_path / "o")
    with pytest.raises(InputError, match=r"neither a class name nor an index 0\.\.1"):
        evaluate_classification(pred, write_truth(tmp_path / "i.csv", [("c1", 2), *cases[1:]]), tmp_path / "o")
    bad = tmp_path / "bad" / "predictions.csv"
    bad.parent.mkdir()
    bad.write_text("case,label,score\nc1,absent,0.3\n")
    with pytest.raises(InputError, match="not a predictions header"):
        evaluate_classification(bad.parent, tmp_path / "i.csv", tmp_path / "o")
    with pytest.raises(InputError, match=r"no predictions\.csv in this folder"):
        evaluate_classification(tmp_path, tmp_path / "i.csv", tmp_path / "o")


def _png_pixels(data: bytes) -> np.ndarray:
    from matplotlib.image import imread

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(io.BytesIO(data), format="png")


def test_pictures_are_real_pngs_and_the_report_embeds_and_links_them(tmp_path: Path) -> None:
    pred, truth = hand_case(tmp_path)
    evaluate_classification(pred, truth, tmp_path / "out", n_bootstrap=50)
    page = (tmp_path / "out" / "report.html").read_text()
    for name in ("roc.png", "confusion.png"):
        data = (tmp_path / "out" / name).read_bytes()
        pixels = _png_pixels(data)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 300
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20  # drawn, not blank
        assert f'href="{name}"' in page and base64.b64encode(data).decode() in page
    assert page.count("<tr class=wrong>") == 2  # c3 and c6
    for text in ("balanced accuracy", "sensitivity", "specificity", "ROC AUC (present vs absent)", "0.667"):
        assert text in page
    assert not list((tmp_path / "out").glob(".*tmp*"))  # atomic writes leave no temporary files


def test_one_class_only_gives_undefined_auc_written_as_null_and_warned(tmp_path: Path) -> None:
    pred, _ = hand_case(tmp_path)
    truth = write_truth(tmp_path / "t.csv", [(c, "absent") for c, _, _ in HAND])
    s = evaluate_classification(pred, truth, tmp_path / "out", n_bootstrap=20)
    assert np.isnan(s.metrics.auc) and s.metrics.per_class[1].n == 0 and s.metrics.accuracy == 0.5
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["metrics"]["auc"] is None
    assert np.isnan(ClassificationSummary.from_json(doc).metrics.per_class[1].sensitivity)
    assert "No true cases of present" in (tmp_path / "out" / "report.html").read_text()
