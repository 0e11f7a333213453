"""Evaluation output: ``metrics.csv``, ``lesions.csv``, ``summary.json``, a self-contained ``report.html`` (PNG
figures embedded as base64 data URIs, no external files, no CDN), and the rich table the CLI prints.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot global state).
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime as _dt
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from medpipe.errors import GeometryError
from medpipe.evaluation.result import EvaluationResult, EvaluationSummary, LabelSummary
from medpipe.io.atomic import write_json_atomic, write_text_atomic
from medpipe.io.geometry import Grid as _Grid
from medpipe.io.geometry import describe_mismatch, grids_match
from medpipe.io.nifti import load_nifti
from medpipe.runtime import __version__

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from medpipe.evaluation.metrics.regions import Region
    from medpipe.evaluation.metrics.scoring import MetricRow
    from medpipe.io.geometry import Grid

_PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
            "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000", "#ffd8b1", "#000075")


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def fmt_stat(entry: LabelSummary, metric: str, style: str = "mean") -> str:
    """A summary statistic as table text: mean ± sd, or median [IQR]; undefined counts are shown."""
    stats = entry.metrics.get(metric)
    if stats is None or stats.n == 0:
        return "–" if stats is None else f"undefined ×{stats.n_undefined}"
    if style == "median":
        text = f"{stats.median:.2f} [{stats.q1:.2f}–{stats.q3:.2f}]"
    else:
        text = f"{stats.mean:.3f} ± {stats.std:.3f}"
    return text + (f" (+{stats.n_undefined} undef.)" if stats.n_undefined else "")


def caption_text(result: EvaluationResult) -> str:
    """The notes under a results table: surface convention, empty policy, missing and resampled cases."""
    lines = [f"Surface convention: {result.settings.surface}. " + " ".join(result.settings.empty_policy.describe())]
    missing = result.missing_predictions
    if missing:
        more = " ..." if len(missing) > 8 else ""
        lines.append(f"No prediction for {len(missing)} reference case(s): {', '.join(missing[:8])}{more}")
    if result.resampled:
        lines.append(f"Resampled onto the reference grid (nearest neighbour): {', '.join(result.resampled)}")
    return "\n".join(lines)


def label_title(label: int, name: str) -> str:
    """``"1 liver"`` or ``"1"``."""
    return f"{label} {name}".strip()


# ---------------------------------------------------------------- tables (CSV, rich)
def metrics_csv(rows: Sequence[MetricRow]) -> str:
    """One line per case × label; empty cell = not computed, ``nan`` = undefined under the empty policy."""
    records = [r.to_record() for r in rows]
    columns = list(dict.fromkeys(k for rec in records for k in rec))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for rec in records:
        writer.writerow([_fmt(rec.get(c), 6) for c in columns])
    return buf.getvalue()


def lesions_csv(rows: Sequence[MetricRow]) -> str:
    """One line per reference lesion (BraTS-2023 matching)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "label", "label_name", "ref_lesion", "volume_mm3", "counted", "pred_lesions", "dice",
                     "hd95_mm"])
    for r in rows:
        for m in r.lesions.matches if r.lesions else ():
            writer.writerow([r.case, r.label, r.label_name, m.ref_lesion, _fmt(m.volume_mm3, 3), m.counted,
                             "+".join(map(str, m.pred_lesions)), _fmt(m.dice, 6), _fmt(m.hd95_mm, 6)])
    return buf.getvalue()




# ---------------------------------------------------------------- figures
def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor=fig.get_facecolor())
    return buf.getvalue()


def boxplots_png(result: EvaluationResult) -> bytes:
    """Box plots per label of Dice, HD95 (mm) and NSD, with every case as a dot."""
    from matplotlib.figure import Figure

    labels = list(result.summary)
    panels = [("dice", "Dice"), ("hd95_mm", "HD95 (mm)"), ("nsd", "NSD")]
    fig = Figure(figsize=(12, 1.2 + 0.45 * max(len(labels), 3)), layout="constrained")
    rng = np.random.default_rng(0)
    names = [label_title(k, result.summary[k].label_name) for k in labels]
    for i, (field, title) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        data = [[float(getattr(r, field)) for r in result.rows_for(k) if getattr(r, field) is not None
                 and not math.isnan(getattr(r, field))] for k in labels]
        pos = np.arange(len(labels))[::-1]
        ax.boxplot([d if d else [np.nan] for d in data], positions=pos, orientation="horizontal", widths=0.6,
                   showfliers=False, patch_artist=True, boxprops={"facecolor": "#dbe7f5", "edgecolor": "#4a6fa5"},
                   medianprops={"color": "#c0392b", "linewidth": 2})
        for y, d in zip(pos, data, strict=True):
            ax.scatter(d, y + rng.uniform(-0.15, 0.15, len(d)), s=12, color="#2c3e50", alpha=0.6, zorder=3)
        ax.set_yticks(pos, names if i == 0 else [""] * len(names))
        ax.set_title(title, fontsize=11)
        ax.grid(axis="x", color="#e5e5e5")
        ax.set_axisbelow(True)
        if field != "hd95_mm":
            ax.set_xlim(-0.02, 1.02)
        for spine in ("top", "right"):
            ax.spines[spine].set_visible(False)
    return _png(fig)


def overlay_png(image: Path, ref: np.ndarray, pred: np.ndarray, grid: Grid, regions: Sequence[Region]) -> bytes:
    """Tri-planar view (axial, coronal, sagittal; radiological left/right) of ``image`` with reference (solid)
    and prediction (dashed) contours of every region, through the slices holding the most foreground.

    ``ref``/``pred``: integer label maps (I, J, K) on ``grid``; the image must lie on the same grid.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    img, info = load_nifti(image, allow_4d=True)
    img = img[..., 0] if img.ndim == 4 else img
    img_grid = _Grid(img.shape[:3], info.affine)  # type: ignore[arg-type]
    if not grids_match(img_grid, grid):
        raise GeometryError(f"image grid does not match the reference: {describe_mismatch(img_grid, grid)}", path=image)
    ornt = nib.orientations.io_orientation(grid.affine)
    ras = [nib.orientations.apply_orientation(a, ornt) for a in (img, ref, pred)]
    sp = np.asarray(grid.spacing_mm)[np.argsort(ornt[:, 0])]
    fg = (ras[1] > 0) | (ras[2] > 0)
    centre = [int(np.argmax(fg.sum(axis=tuple(a for a in range(3) if a != ax)))) if fg.any() else s // 2
              for ax, s in enumerate(fg.shape)]
    lo, hi = np.percentile(ras[0], [0.5, 99.5])
    fig = Figure(figsize=(13, 4.6), facecolor="#111111", layout="constrained")
    views = [("axial", 2, (sp[1] / sp[0]), ("R", "L", "A", "P")), ("coronal", 1, sp[2] / sp[0], ("R", "L", "S", "I")),
             ("sagittal", 0, sp[2] / sp[1], ("A", "P", "S", "I"))]
    for i, (title, axis, aspect, (left, right, top, bottom)) in enumerate(views):
        ax = fig.add_subplot(1, 3, i + 1)
        take: list[slice | int] = [slice(None)] * 3
        take[axis] = centre[axis]
        ax.imshow(ras[0][tuple(take)].T, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=aspect,
                  interpolation="nearest")
        for j, region in enumerate(regions):
            colour = _PALETTE[j % len(_PALETTE)]
            for arr, style in ((ras[1], "solid"), (ras[2], "dashed")):
                m = np.isin(arr[tuple(take)], region.values).T
                if m.any() and not m.all():
                    ax.contour(m, levels=[0.5], colors=[colour], linewidths=1.3, linestyles=style)
        ax.invert_xaxis()
        ax.set_axis_off()
        ax.set_title(f"{title} {centre[axis]}", color="#dddddd", fontsize=10)
        for x, y, text in ((0.02, 0.5, left), (0.98, 0.5, right), (0.5, 0.98, top), (0.5, 0.02, bottom)):
            ax.text(x, y, text, transform=ax.transAxes, color="#ffcc00", fontsize=9, ha="center", va="center")
    handles = [Line2D([], [], color=_PALETTE[j % len(_PALETTE)], label=label_title(r.id, r.name))
               for j, r in enumerate(regions)]
    handles += [Line2D([], [], color="#dddddd", label="reference"),
                Line2D([], [], color="#dddddd", linestyle="dashed", label="prediction")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 10), frameon=False,
               labelcolor="#dddddd", fontsize=9)
    return _png(fig)


# ---------------------------------------------------------------- HTML
_CSS = """body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#222;background:#f6f7f9}
main{max-width:1200px;margin:0 auto;padding:24px}h1{margin:0 0 4px}h2{margin-top:32px;border-bottom:2px solid #dde}
.sub{color:#666}table{border-collapse:collapse;background:#fff;margin:8px 0;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #e4e6ea;text-align:right}th{background:#eef1f5}
td:first-child,th:first-child{text-align:left}.warn{background:#fff4e0;border-left:4px solid #f0a020;padding:8px 12px}
.note{background:#fff;border-left:4px solid #4a6fa5;padding:8px 12px}img{max-width:100%;border-radius:4px}
.bad{color:#b03030;font-weight:600}details{background:#fff;margin:10px 0;padding:8px 12px;border-radius:4px}
summary{cursor:pointer;font-weight:600}code{background:#eef1f5;padding:0 3px}"""


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _case_order(result: EvaluationResult) -> list[tuple[str, float]]:
    """Cases by mean Dice over labels, worst first (undefined Dice sorts first: it needs a look)."""
    scores = []
    for case in result.cases:
        dice = [r.dice for r in result.rows if r.case == case and r.dice is not None]
        scores.append((case, float(np.mean(dice)) if dice else float("nan")))
    return sorted(scores, key=lambda cs: (not math.isnan(cs[1]), cs[1]))


def render_html(result: EvaluationResult) -> str:
    """The whole report as one HTML string with embedded figures."""
    e = html.escape
    s = result.settings
    parts = [f"<h1>medpipe evaluation</h1><div class=sub>{len(result.cases)} case(s) · preset <b>{e(s.preset)}"
             f"</b> ({e(s.preset_description)}) · surface convention <b>{e(s.surface)}</b> · "
             f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}<br>prediction <code>{e(s.pred)}</code> · "
             f"reference <code>{e(s.ref)}</code></div>"]
    warnings = [e(line) for line in caption_text(result).splitlines()[1:]]
    undefined = [f"{e(label_title(k, v.label_name))}: {m} undefined in {st.n_undefined} case(s)"
                 for k, v in result.summary.items() for m, st in v.metrics.items() if st.n_undefined]
    if warnings or undefined:
        parts.append("<div class=warn>" + "<br>".join(warnings + undefined) + "</div>")
    rows = []
    for key, v in result.summary.items():
        em = v.empty
        t = s.nsd_tolerance_mm.get(key)
        rows.append([e(label_title(key, v.label_name)), v.n_cases, fmt_stat(v, "dice"), fmt_stat(v, "iou"),
                     fmt_stat(v, "hd_mm", "median"), fmt_stat(v, "hd95_mm", "median"), fmt_stat(v, "assd_mm", "median"),
                     fmt_stat(v, "nsd") + (f" @{t:g} mm" if t is not None else ""),
                     f"{em['both']} / {em['ref']} / {em['pred']}"])
    parts += ["<h2>Summary per label</h2>", _table(
        ["label", "cases", "Dice mean ± sd", "IoU mean ± sd", "HD mm median [IQR]", "HD95 mm median [IQR]",
         "ASSD mm median [IQR]", "NSD mean ± sd", "empty both / ref / pred"], rows)]
    les = [[e(label_title(k, v.label_name)), fmt_stat(v, "lesion_dice"), fmt_stat(v, "lesion_hd95_mm"),
            v.lesions.ref_lesions, v.lesions.tp, v.lesions.fn, v.lesions.fp, _fmt(v.lesions.sensitivity),
            _fmt(v.lesions.fp_per_case, 2)] for k, v in result.summary.items() if v.lesions is not None]
    if les:
        parts += ["<h2>Lesion-wise (BraTS-2023 rules)</h2>", _table(
            ["label", "lesion Dice", "lesion HD95 mm", "ref lesions", "TP", "FN", "FP", "sensitivity",
             "FP / case"], les)]
    if result.detection is not None:
        from medpipe.evaluation.report_detection import detection_html

        parts.append(detection_html(result.detection))
    parts += ["<h2>Distribution per label</h2>", _img(boxplots_png(result), "box plots per label")]
    policy = "".join(f"<li>{e(line)}</li>" for line in s.empty_policy.describe())
    parts.append(f"<h2>Definitions</h2><div class=note><ul>{policy}<li>{e(_DEFINITIONS[s.surface])}</li>"
                 "<li>Dice = 2·TP/(2·TP+FP+FN); IoU = TP/(TP+FP+FN); volumes in mL from the header spacing; "
                 "distances in mm. See docs/metrics.md.</li></ul></div>")
    order = _case_order(result)
    worst = []
    for case, mean in order:
        mine = [r for r in result.rows if r.case == case]
        low = min((r for r in mine if r.dice is not None and not math.isnan(r.dice)), key=lambda r: r.dice or 0,
                  default=None)
        hd = [r.hd95_mm for r in mine if r.hd95_mm is not None and not math.isnan(r.hd95_mm)]
        worst.append([f'<a href="#case-{e(case)}">{e(case)}</a>', f"<span class=bad>{_fmt(mean)}</span>"
                      if mean < 0.5 else _fmt(mean),
                      e(label_title(low.label, low.label_name)) + f" ({_fmt(low.dice)})" if low else "",
                      _fmt(max(hd), 2) if hd else "", ", ".join(sorted({r.empty for r in mine} - {"none"}))])
    parts += ["<h2>Cases, worst first</h2>",
              _table(["case", "mean Dice", "lowest label (Dice)", "max HD95 mm", "empty masks"], worst)]
    parts.append("<h2>Per case</h2>")
    for case, _ in order:
        mine = [r for r in result.rows if r.case == case]
        body = _table(["label", "empty", "Dice", "HD95 mm", "ASSD mm", "NSD", "ref mL", "pred mL"],
                      [[e(label_title(r.label, r.label_name)), r.empty, _fmt(r.dice), _fmt(r.hd95_mm, 2),
                        _fmt(r.assd_mm, 2), _fmt(r.nsd), _fmt(r.ref_volume_ml, 2), _fmt(r.pred_volume_ml, 2)]
                       for r in mine])
        pic = _img(result.overlays[case], f"overlay {case}") if case in result.overlays else ""
        parts.append(f'<details id="case-{e(case)}" open><summary>{e(case)}</summary>{body}{pic}</details>')
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>medpipe evaluation</title>"
            f"<style>{_CSS}</style></head><body><main>{''.join(parts)}</main></body></html>\n")


_DEFINITIONS = {
    "surfel": "Surfaces: voxel-corner surface elements weighted by area (google-deepmind surface-distance). "
              "HD = max of the two directed maxima; HD95 = max of the two directed area-weighted 95th percentiles; "
              "ASSD = area-weighted mean over both surfaces; NSD = fraction of surface area within the tolerance.",
    "voxel": "Surfaces: mask voxels with a face neighbour outside (MONAI/MedPy). HD = max of the directed maxima; "
             "HD95 = max of the directed 95th percentiles (linear interpolation, as MONAI); ASSD = mean over the "
             "points of both surfaces; NSD = fraction of surface points within the tolerance.",
}


def summary_json(result: EvaluationResult) -> dict[str, object]:
    """The content of ``summary.json``."""
    return EvaluationSummary.of(result, __version__).to_json()


def write_report(result: EvaluationResult, out_dir: Path) -> EvaluationResult:
    """Write every output atomically into ``out_dir``; returns ``result`` with ``paths`` filled in."""
    paths = {"metrics_csv": out_dir / "metrics.csv", "summary_json": out_dir / "summary.json",
             "report_html": out_dir / "report.html"}
    html_text = render_html(result)  # render before writing anything: a failure leaves no partial report
    write_text_atomic(paths["metrics_csv"], metrics_csv(result.rows))
    if any(r.lesions is not None for r in result.rows):
        paths["lesions_csv"] = out_dir / "lesions.csv"
        write_text_atomic(paths["lesions_csv"], lesions_csv(result.rows))
    if result.detection is not None:
        from medpipe.evaluation.report_detection import detection_csv

        paths["detection_csv"] = out_dir / "detection.csv"
        write_text_atomic(paths["detection_csv"], detection_csv(result.detection))
    write_json_atomic(paths["summary_json"], summary_json(result))
    write_text_atomic(paths["report_html"], html_text)
    return dataclasses.replace(result, paths=paths)
