"""`medpipe batch status` on a ledger caught mid-batch (built by hand, no inference): counts, throughput, ETA, the
failed cases with their reasons, and batch.json / batch.html worst first with volumes and QC review flags."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from typer.testing import CliRunner

from medpipe.batch.ledger import Ledger
from medpipe.batch.records import BatchCase, BatchSpec, Completion, Failure
from medpipe.batch.report import write_report
from medpipe.batch.status import batch_status
from medpipe.cli import app

runner = CliRunner()


def _sidecar(case: str, spec: BatchSpec, seconds: float, reasons: list[str]) -> dict:
    """The parts of a real inference sidecar that the status reads (same keys as InferenceSidecar.to_json)."""
    return {"case": case, "status": "ok", "mask": f"{case}.nii.gz", "config_hash": spec.config_hash,
            "model": {"sha256": spec.model_sha256}, "seconds_total": seconds,
            "timings_s": {"preprocess": 0.1, "inference": seconds - 0.2, "export": 0.1},
            "qc": {"format": "medpipe-qc/1", "review": bool(reasons), "reasons": reasons,
                   "labels": {"1": {"name": "kidney", "volume_ml": 151.25}, "2": {"name": "tumor", "volume_ml": 0.0}}}}


def _mid_batch(out: Path, hours_ago: float = 1.0) -> BatchSpec:
    """6 cases an hour into a batch: 3 done (one flagged for review), 1 failed, 1 running (held by this process),
    1 pending."""
    ledger = Ledger(out)
    ledger.create()
    now = time.time()
    spec = BatchSpec("m", "m/best.pt", "a" * 64, "cfg1234", {}, 60.0, None, 2, now - hours_ago * 3600)
    cases = [BatchCase(c, (f"/data/{c}.nii.gz",)) for c in ("done1", "done2", "flagged", "bad", "busy", "todo")]
    ledger.write_spec(spec, cases)
    for case, seconds, reasons in (("done1", 10.0, []), ("done2", 30.0, []),
                                   ("flagged", 20.0, ["label 2 (tumor): empty"])):
        (ledger.predictions / f"{case}.nii.gz").write_bytes(b"mask")
        (ledger.done_dir / f"{case}.json").write_text(json.dumps(
            Completion(case, "w0", "h", 1, now - 600, now - 300).to_json()))
        (ledger.predictions / f"{case}.json").write_text(json.dumps(_sidecar(case, spec, seconds, reasons)))
    (ledger.failed_dir / "bad.json").write_text(json.dumps(
        Failure("bad", "crash", "worker killed by SIGKILL (peak memory 23110 MB); tried 2 times", 2, now, "w1")
        .to_json()))
    assert ledger.claim("busy", "w2", spec) is not None
    return spec


def test_status_mid_batch_counts_throughput_eta_and_failures(tmp_path: Path) -> None:
    _mid_batch(tmp_path)
    status = batch_status(tmp_path)
    c = status.counts
    assert (c.total, c.done, c.failed, c.running, c.pending) == (6, 3, 1, 1, 1)
    assert status.cases_per_hour is not None and 2.9 < status.cases_per_hour < 3.01  # 3 cases in one hour
    assert status.eta_s is not None and 2300 < status.eta_s < 2410  # 2 cases left at 3 cases/hour: 40 min
    assert [r.case_id for r in status.rows] == ["bad", "flagged", "busy", "todo", "done2", "done1"]  # worst first
    res = runner.invoke(app, ["batch", "status", str(tmp_path)])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "3 done, 1 failed, 1 running, 1 pending of 6" in text and "3 cases/hour" in text
    assert re.search(r"ETA 4[01]\.\d min", text), text
    assert "bad" in text and "SIGKILL" in text and "tried 2 times" in text
    assert not (tmp_path / "batch.json").exists()  # only --report writes the report


def test_report_has_volumes_and_qc_flags_worst_first(tmp_path: Path) -> None:
    _mid_batch(tmp_path)
    res = runner.invoke(app, ["batch", "status", str(tmp_path), "--report"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "batch.json").read_text())
    rows = {r["case_id"]: r for r in report["rows"]}
    assert [r["case_id"] for r in report["rows"]][:2] == ["bad", "flagged"]
    assert rows["flagged"]["qc_flags"] == ["label 2 (tumor): empty"] and rows["done1"]["qc_flags"] == []
    assert rows["done1"]["volumes"] == {"kidney": 151.25, "tumor": 0.0}
    assert rows["done2"]["timings_s"]["inference"] == 29.8 and rows["done2"]["seconds"] == 30.0
    assert rows["bad"]["reason"].startswith("crash: worker killed by SIGKILL")
    page = (tmp_path / "batch.html").read_text()
    assert page.index(">bad<") < page.index(">flagged<") < page.index(">busy<") < page.index(">done1<")
    assert "label 2 (tumor): empty" in page and "kidney: 151.25" in page and "volumes (mL)" in page
    assert write_report(tmp_path).counts.done == 3
