"""``OUT/batch.json`` and ``OUT/batch.html``: per-case status, timings, volumes and QC flags, worst first."""

from __future__ import annotations

import html
import time
from pathlib import Path

from medpipe.batch.status import BatchStatus, batch_status
from medpipe.io.atomic import write_json_atomic, write_text_atomic

_COLOURS = {"failed": "#fbe3e4", "running": "#fff6d5", "pending": "#eef1f5", "done": "#ffffff"}


def write_report(out: Path) -> BatchStatus:
    """Read the ledger, write ``batch.json`` and ``batch.html`` into ``out``; return the status."""
    status = batch_status(out)
    write_json_atomic(out / "batch.json", status.to_json())
    write_text_atomic(out / "batch.html", render_html(status))
    return status


def _fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def render_html(status: BatchStatus) -> str:
    """A self-contained HTML page (no scripts, no network) of the batch status."""
    c = status.counts
    esc = html.escape
    rows = []
    for r in status.rows:
        flags = ", ".join(r.qc_flags) if r.status == "done" else ""
        if r.status == "done" and flags:
            colour = "#fff0d9"
        else:
            colour = _COLOURS[r.status]
        volumes = ", ".join(f"{k}: {v}" for k, v in r.volumes.items())
        timings = ", ".join(f"{k} {v:g}" for k, v in r.timings_s.items())
        rows.append(
            f"<tr style='background:{colour}'><td>{esc(r.case_id)}</td><td>{esc(r.status)}</td>"
            f"<td>{r.attempts}</td><td>{_fmt(r.seconds)}</td><td>{esc(timings)}</td><td>{esc(volumes)}</td>"
            f"<td>{esc(flags)}</td><td>{esc(r.reason or '')}</td></tr>"
        )
    rate = f"{status.cases_per_hour:.0f} cases/hour" if status.cases_per_hour else "no throughput yet"
    eta = f", ETA {status.eta_s / 60:.1f} min" if status.eta_s else ""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>medpipe batch: {esc(status.out)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}}</style></head><body>
<h1>medpipe batch</h1>
<p>{esc(status.out)} &middot; model {esc(status.model)} &middot; launcher {esc(status.launcher)} &middot; {when}</p>
<p><b>{c.done}</b> done, <b>{c.failed}</b> failed, <b>{c.running}</b> running, <b>{c.pending}</b> pending of
{c.total} &middot; {rate}{eta}</p>
<table><tr><th>case</th><th>status</th><th>attempts</th><th>seconds</th><th>timings (s)</th><th>volumes (mL)</th>
<th>QC flags</th><th>reason</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
