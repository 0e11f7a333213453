"""Detection outputs: ``detection.csv`` (one line per lesion) and the report section (a table per label and the
FROC curve as an embedded PNG). Kept apart from :mod:`medpipe.evaluation.report`, which calls
:func:`detection_html` and :func:`detection_csv`."""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from typing import TYPE_CHECKING

from medpipe.evaluation.detection import FROC_RATES, DetectionResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")
_RATE_TEXT = ("1/8", "1/4", "1/2", "1", "2", "4", "8")
CSV_COLUMNS = ("case", "label", "label_name", "kind", "lesion", "volume_ml", "centroid_r_mm", "centroid_a_mm",
               "centroid_s_mm", "score", "status", "match", "iou", "distance_mm")


def _num(v: float | None, digits: int = 4) -> str:
    if v is None:
        return ""
    return "nan" if math.isnan(v) else f"{v:.{digits}f}"


def detection_csv(det: DetectionResult) -> str:
    """One line per predicted (TP/FP) and reference (TP/FN) lesion, with its match."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for les in det.lesions:
        writer.writerow([les.case, les.label, les.label_name, les.kind, les.lesion, _num(les.volume_ml, 6),
                         *(f"{c:.3f}" for c in les.centroid_ras_mm), _num(les.score, 6), les.status,
                         "" if les.match is None else les.match, _num(les.iou), _num(les.distance_mm, 3)])
    return buf.getvalue()


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def froc_png(det: DetectionResult) -> bytes:
    """FROC curves (sensitivity against false positives per scan, log2 axis 1/8 ... 8), one per label, with the
    seven LUNA16 operating points marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = FROC_RATES[0] / 2, FROC_RATES[-1] * 2
    for i, lab in enumerate(d for d in det.labels if d.n_ref):
        colour = _COLOURS[i % len(_COLOURS)]
        xs = [max(fp, lo) for fp, _ in lab.curve] + [hi]
        ys = [s for _, s in lab.curve] + [lab.curve[-1][1]]
        ax.step(xs, ys, where="post", color=colour, linewidth=1.8,
                label=f"{lab.label} {lab.label_name}".strip() + f" (CPM {lab.cpm:.3f})")
        ax.plot([r for r, _ in lab.froc], [s for _, s in lab.froc], "o", color=colour, markersize=5)
    ax.set_xscale("log", base=2)
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(FROC_RATES, _RATE_TEXT)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title("FROC", fontsize=11)
    ax.grid(color="#e5e5e5")
    ax.legend(loc="lower right", fontsize=9, frameon=False)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    return _png(fig)


def detection_html(det: DetectionResult) -> str:
    """The report section: rule and score, counts and ratios per label, FROC sensitivities, the FROC picture."""
    e = html.escape
    head = ["label", "scans", "ref", "pred", "TP", "FP", "FN", "sens.", "prec.", "F1", *_RATE_TEXT, "CPM"]
    rows = []
    for d in det.labels:
        rows.append([e(f"{d.label} {d.label_name}".strip()), d.n_cases, d.n_ref, d.n_pred, d.tp, d.fp, d.fn,
                     _num(d.sensitivity, 3), _num(d.precision, 3), _num(d.f1, 3),
                     *(_num(s, 3) for _, s in d.froc), _num(d.cpm, 3)])
    table = ('<table><tr><th colspan=4>lesions</th><th colspan=6>counts and ratios</th>'
             f'<th colspan={len(FROC_RATES)}>FROC: sensitivity at FP per scan</th><th></th></tr><tr>'
             + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows) + "</table>")
    note = (f"<div class=note>Matching: {e(det.rule.describe())}. FROC score: {e(det.score)}. Sensitivity at a rate "
            "is the highest reached with at most that many false positives per scan (no interpolation); CPM is "
            "the mean of the seven. Every lesion: <code>detection.csv</code>. See docs/lesions.md.</div>")
    picture = ""
    if any(d.n_ref for d in det.labels):
        data = base64.b64encode(froc_png(det)).decode()
        picture = f'<img alt="FROC curve" src="data:image/png;base64,{data}">'
    return f"<h2>Lesion detection</h2>{note}{table}{picture}"
