"""``medpipe train --smoke`` (issue 15): the shipped real-dataset configs run end to end on built datasets in a
few CPU seconds: one epoch of a few iterations, small patches, one validation case."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medpipe.cli import app
from tests.conftest import REPO
from tests.datasets.test_layouts import make_layout

runner = CliRunner()


@pytest.mark.slow
@pytest.mark.parametrize(("config", "fmt"), [("brats.yaml", "brats2023"), ("kits.yaml", "kits")])
def test_shipped_config_smoke_run(tmp_path: Path, config: str, fmt: str) -> None:
    root = make_layout(tmp_path / "data", fmt, n=4)
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(REPO / "pipelines" / config), "--data", str(root), "--out", str(out),
                              "--device", "cpu", "--smoke"])
    assert res.exit_code == 0, res.output
    assert (out / "best.pt").is_file() or (out / "last.pt").is_file()
    split = json.loads((out / "split.json").read_text())
    assert len(split["val"]) == 1 and len(split["train"]) == 3
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 1 and float(rows[0]["data_wait_s"]) >= 0 and float(rows[0]["compute_s"]) > 0
