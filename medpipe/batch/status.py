"""Where a batch stands, read from its ledger: counts for progress, per-case rows for ``status`` and the report."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medpipe.batch.ledger import Ledger
from medpipe.batch.records import BatchCase, read_json

STATUS_FORMAT = "medpipe-batch-status/1"


@dataclass(frozen=True)
class Counts:
    total: int
    done: int
    failed: int
    running: int

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - self.failed - self.running)


@dataclass(frozen=True)
class BatchEvent:
    """What a launcher reports while it runs: kind is progress, worker, crash, timeout or submitted."""

    kind: str
    message: str
    counts: Counts


def quick_counts(ledger: Ledger, cases: list[BatchCase]) -> Counts:
    """Counts from file names only (cheap enough to call every second on 10,000 cases)."""
    ids = {c.case_id for c in cases}
    done = ids & {n[:-5] for n in _names(ledger.predictions) if n.endswith(".json")}
    failed = (ids - done) & {n[:-5] for n in _names(ledger.failed_dir) if n.endswith(".json")}
    running = (ids - done - failed) & {n[:-5] for n in _names(ledger.locks) if n.endswith(".lock")
                                       and not n.startswith(".")}
    return Counts(len(ids), len(done), len(failed), len(running))


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


@dataclass(frozen=True)
class CaseRow:
    """One case in the status report; ``seconds`` is the inference time from the sidecar."""

    case_id: str
    status: str
    attempts: int = 0
    seconds: float | None = None
    finished_at: float | None = None
    reason: str | None = None
    worker: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    volumes: dict[str, Any] = field(default_factory=dict)
    qc_flags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BatchStatus:
    """The whole batch: counts, throughput (cases/hour since the last submission), ETA and rows worst first."""

    out: str
    model: str
    launcher: str
    submitted_at: float
    counts: Counts
    cases_per_hour: float | None
    eta_s: float | None
    rows: list[CaseRow]
    format: str = STATUS_FORMAT

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["counts"]["pending"] = self.counts.pending
        return d

    @property
    def failed(self) -> list[CaseRow]:
        return [r for r in self.rows if r.status == "failed"]


_ORDER = {"failed": 0, "running": 2, "pending": 3, "done": 4}


def _rank(row: CaseRow) -> tuple[int, float]:
    flagged = row.status == "done" and bool(row.qc_flags)
    return (1 if flagged else _ORDER[row.status], -(row.seconds or 0.0))


def batch_status(out: Path) -> BatchStatus:
    """Read the ledger of ``out`` and say where every case stands (full check of each sidecar)."""
    ledger = Ledger(out)
    spec = ledger.read_spec()
    rows = [_row(ledger, spec, case) for case in ledger.read_cases()]
    rows.sort(key=_rank)
    n = {s: sum(r.status == s for r in rows) for s in _ORDER}
    counts = Counts(len(rows), n["done"], n["failed"], n["running"])
    recent = [r.finished_at for r in rows if r.finished_at and r.finished_at >= spec.submitted_at]
    rate = eta = None
    if recent:
        end = time.time() if counts.running + counts.pending else max(recent)
        span = end - spec.submitted_at
        rate = len(recent) / span * 3600 if span > 0 else None
        if rate:
            eta = (counts.pending + counts.running) / rate * 3600
    return BatchStatus(str(out), spec.model, spec.launcher, spec.submitted_at, counts, rate, eta, rows)


def _row(ledger: Ledger, spec: Any, case: BatchCase) -> CaseRow:
    cid = case.case_id
    if ledger.is_done(case, spec):
        meta = read_json(ledger.sidecar(cid)) or {}
        comp = ledger.completion(cid)
        flags, volumes = _qc(meta)
        return CaseRow(cid, "done", comp.attempt if comp else 1, meta.get("seconds_total"),
                       comp.finished_at if comp else ledger.sidecar(cid).stat().st_mtime,
                       worker=comp.worker if comp else None, timings_s=dict(meta.get("timings_s") or {}),
                       volumes=volumes, qc_flags=flags)
    failure = ledger.failure(cid)
    if failure:
        return CaseRow(cid, "failed", failure.attempts, reason=f"{failure.kind}: {failure.reason}",
                       worker=failure.worker)
    claim, mtime = ledger.read_claim(cid)
    if mtime and ledger.claim_is_live(claim, mtime, spec.lease_s):
        return CaseRow(cid, "running", claim.attempt if claim else 1, worker=claim.worker if claim else None)
    reason = claim.reason if claim and claim.state == "crashed" else None
    return CaseRow(cid, "pending", claim.attempt if claim else 0, reason=reason)


def _qc(meta: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The review reasons (empty unless the case is flagged for review) and the volume in mL of each label, from
    the sidecar's ``qc`` record (:class:`medpipe.inference.qc.CaseQC`)."""
    qc = meta.get("qc") or {}
    flags = [str(r) for r in qc.get("reasons") or []] if qc.get("review") else []
    volumes = {str(rec.get("name") or key): rec.get("volume_ml")
               for key, rec in (qc.get("labels") or {}).items() if isinstance(rec, dict)}
    return flags, volumes
