"""``medpipe evaluate --task classification``: the table, the files, clean refusals (exit 1, no traceback), and
options of the other task refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medpipe.cli import app
from tests.evaluation.test_classify import HAND, hand_case, write_truth

runner = CliRunner()


def _clean_error(res, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    text = " ".join(res.output.split())
    for frag in fragments:
        assert frag in text, f"{frag!r} not in {text!r}"


def test_evaluate_classification_prints_the_table_and_writes_the_report(tmp_path: Path) -> None:
    pred, truth = hand_case(tmp_path)
    res = runner.invoke(app, ["evaluate", str(pred.parent), str(truth), "-o", str(tmp_path / "out"),
                              "--task", "classification", "--n-bootstrap", "50", "--seed", "1"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "accuracy 0.667" in text and "present" in text and "report.html" in text
    for name in ("summary.json", "cases.csv", "roc.png", "confusion.png", "report.html"):
        assert (tmp_path / "out" / name).is_file(), name


def test_evaluate_classification_refuses_a_prediction_without_truth(tmp_path: Path) -> None:
    pred, _ = hand_case(tmp_path)
    fewer = write_truth(tmp_path / "fewer.csv", [(c, label) for c, _, label in HAND[1:]])
    res = runner.invoke(app, ["evaluate", str(pred), str(fewer), "-o", str(tmp_path / "out"),
                              "--task", "classification"])
    _clean_error(res, "prediction without a truth label: c1", str(pred))
    assert not (tmp_path / "out" / "report.html").exists()


@pytest.mark.parametrize(("task", "option"), [("classification", ["--surface", "voxel"]),
                                              ("classification", ["--detection"]),
                                              ("segmentation", ["--n-bootstrap", "10"])])
def test_options_of_the_other_task_are_refused_by_name(tmp_path: Path, task: str, option: list[str]) -> None:
    pred, truth = hand_case(tmp_path)
    res = runner.invoke(app, ["evaluate", str(pred), str(truth), "-o", str(tmp_path / "out"), "--task", task,
                              *option])
    _clean_error(res, f"{option[0]} does not apply to --task {task}")
