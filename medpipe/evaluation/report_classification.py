"""Classification outputs: ``cases.csv``, the ROC and confusion-matrix pictures, and ``report.html`` (the same
self-contained style as the segmentation report, whose CSS and helpers it shares: figures embedded as base64
PNGs, each linking to its PNG file beside the report).

Arrays: ``y`` (N,) true class indices, ``probs`` (N, K) class probabilities, cases in the order of
``summary.cases``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import io
import math
from collections.abc import Sequence

import numpy as np

from medpipe.evaluation.classification import ClassificationMetrics, roc_curve
from medpipe.evaluation.report import _CSS, _PALETTE, _fmt, _img, _png, _table
from medpipe.evaluation.result import ClassificationSummary

_EXTRA_CSS = """.figs{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}.figs img{max-width:560px}
td.t,th.t{text-align:left}tr.wrong td{background:#fde8e8}tr.wrong td:first-child{border-left:4px solid #c0392b}"""


def cases_csv(cases: Sequence[str], y: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> str:
    """One line per case: ``case, truth, predicted, correct, prob_<class>...`` (class names; argmax)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "truth", "predicted", "correct", *(f"prob_{c}" for c in classes)])
    for case, t, p in zip(cases, y, probs, strict=True):
        k = int(np.argmax(p))
        writer.writerow([case, classes[t], classes[k], str(k == t).lower(), *(f"{v:.6f}" for v in p)])
    return buf.getvalue()


def _auc_text(auc: float, ci: tuple[float, float]) -> str:
    if math.isnan(auc):
        return "AUC undefined"
    return f"AUC {auc:.3f}" + ("" if math.isnan(ci[0]) else f", 95 % CI {ci[0]:.3f}–{ci[1]:.3f}")


def roc_png(y: np.ndarray, probs: np.ndarray, m: ClassificationMetrics) -> bytes:
    """ROC curves, one-vs-rest: one curve for two classes (the positive class, index 1), else one per class,
    each with its AUC and 95 % bootstrap interval in the legend, the argmax decision marked, and the diagonal."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(5.6, 5.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    shown = [1] if len(m.classes) == 2 else range(len(m.classes))
    for i, c in enumerate(shown):
        cls = m.per_class[c]
        colour = _PALETTE[2] if len(m.classes) == 2 else _PALETTE[i % len(_PALETTE)]
        pos = y == c
        if pos.all() or not pos.any():
            continue  # no curve without both positives and negatives
        fpr, tpr = roc_curve(pos, probs[:, c])
        name = f"{cls.name} vs rest" if len(m.classes) > 2 else f"{cls.name} (positive)"
        ax.plot(fpr, tpr, color=colour, linewidth=2, label=f"{name}: {_auc_text(cls.auc, cls.auc_ci)}")
        ax.plot([1 - cls.specificity], [cls.sensitivity], "o", color=colour, markersize=7, markeredgecolor="white")
    ax.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=1, label="chance (AUC 0.5)")
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], marker="o", linestyle="", color="#555555", label="argmax decision"))
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC, one-vs-rest" if len(m.classes) > 2 else f"ROC: {m.classes[1]} vs {m.classes[0]}", fontsize=11)
    ax.grid(color="#e5e5e5")
    ax.legend(handles=handles, loc="lower right", fontsize=8, frameon=True, framealpha=0.9)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    return _png(fig)


def confusion_png(m: ClassificationMetrics) -> bytes:
    """The confusion matrix: counts (and the share of the true class's cases) per true × predicted class."""
    from matplotlib.figure import Figure

    counts = np.asarray(m.confusion, dtype=float)
    k = len(m.classes)
    side = max(4.2, 1.6 + 0.9 * k)
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(counts.max(), 1))  # counts written in the cells: no colour bar
    rows = counts.sum(axis=1)
    for i in range(k):
        for j in range(k):
            share = f"\n{counts[i, j] / rows[i]:.0%}" if rows[i] else ""
            dark = counts[i, j] > 0.6 * counts.max()
            ax.text(j, i, f"{int(counts[i, j])}{share}", ha="center", va="center", fontsize=11,
                    color="white" if dark else "#222222", fontweight="bold" if i == j else "normal")
    long_names = max(map(len, m.classes)) * k > 40
    ax.set_xticks(range(k), m.classes, rotation=30 if long_names else 0, ha="right" if long_names else "center")
    ax.set_yticks(range(k), m.classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix ({m.n} cases)", fontsize=11)
    return _png(fig)


def _headline(m: ClassificationMetrics) -> str:
    correct = sum(m.confusion[i][i] for i in range(len(m.classes)))
    auc_name = (f"ROC AUC ({m.classes[1]} vs {m.classes[0]})" if len(m.classes) == 2
                else "ROC AUC (macro mean of one-vs-rest)")
    ci = "" if math.isnan(m.auc_ci[0]) else f"{m.auc_ci[0]:.3f}–{m.auc_ci[1]:.3f}"
    rows: list[list[object]] = [["cases", m.n, ""], ["accuracy", f"{_fmt(m.accuracy)} ({correct}/{m.n})", ""],
            ["balanced accuracy", _fmt(m.balanced_accuracy), ""], [html.escape(auc_name), _fmt(m.auc), ci]]
    per_class = [[html.escape(c.name), c.n, sum(r[c.index] for r in m.confusion), _fmt(c.sensitivity),
                  _fmt(c.specificity), _fmt(c.auc),
                  "" if math.isnan(c.auc_ci[0]) else f"{c.auc_ci[0]:.3f}–{c.auc_ci[1]:.3f}"] for c in m.per_class]
    return ("<h2>Summary</h2>" + _table(["metric", "value", "95 % CI (bootstrap)"], rows)
            + "<h2>Per class (one-vs-rest)</h2>"
            + _table(["class", "true cases", "predicted", "sensitivity", "specificity", "ROC AUC",
                      "AUC 95 % CI"], per_class))


def _warnings(s: ClassificationSummary) -> list[str]:
    m = s.metrics
    out = []
    if s.missing_predictions:
        more = " ..." if len(s.missing_predictions) > 8 else ""
        out.append(f"No prediction for {len(s.missing_predictions)} truth case(s), not scored: "
                   f"{', '.join(s.missing_predictions[:8])}{more}")
    empty = [c.name for c in m.per_class if c.n == 0]
    if empty:
        out.append(f"No true cases of {', '.join(empty)}: its sensitivity and AUC are undefined")
    if m.n_bootstrap and m.bootstrap_used < m.n_bootstrap:
        out.append(f"AUC interval from {m.bootstrap_used} of {m.n_bootstrap} bootstrap resamples "
                   "(resamples lacking a class were skipped)")
    return [html.escape(line) for line in out]


def _case_table(s: ClassificationSummary, y: np.ndarray, probs: np.ndarray) -> str:
    """Cases by the probability given to their true class, lowest first; wrong predictions highlighted."""
    e, classes = html.escape, s.metrics.classes
    head = "<th>case</th><th class=t>truth</th><th class=t>predicted</th>" + "".join(
        f"<th>{e(h)}</th>" for h in ["p(truth)", *(f"p({c})" for c in classes)])
    body = []
    for i in sorted(range(len(s.cases)), key=lambda i: (probs[i, y[i]], s.cases[i])):
        k = int(np.argmax(probs[i]))
        wrong = k != y[i]
        cells = [e(s.cases[i]), e(classes[y[i]]), (f"<span class=bad>{e(classes[k])}</span>" if wrong
                                                    else e(classes[k])), _fmt(float(probs[i, y[i]])),
                 *(_fmt(float(v)) for v in probs[i])]
        body.append(f"<tr{' class=wrong' if wrong else ''}>" + "".join(
            f"<td{' class=t' if j in (1, 2) else ''}>{c}</td>" for j, c in enumerate(cells)) + "</tr>")
    n_wrong = int((probs.argmax(axis=1) != y).sum())
    return (f"<h2>Cases, least sure of the truth first</h2><div class=sub>{n_wrong} wrong prediction(s) "
            f"highlighted; every case: <code>cases.csv</code></div><table><tr>{head}</tr>{''.join(body)}</table>")


def render_html(s: ClassificationSummary, y: np.ndarray, probs: np.ndarray, roc: bytes, confusion: bytes) -> str:
    """The whole report as one HTML string; the pictures embedded, each linking to its file."""
    e, m = html.escape, s.metrics
    parts = [f"<h1>medpipe classification evaluation</h1><div class=sub>{m.n} case(s) · {len(m.classes)} classes: "
             f"{e(', '.join(m.classes))} · {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}<br>predictions "
             f"<code>{e(s.pred)}</code> · truth <code>{e(s.truth)}</code></div>"]
    warnings = _warnings(s)
    if warnings:
        parts.append("<div class=warn>" + "<br>".join(warnings) + "</div>")
    parts.append(_headline(m))
    parts.append('<h2>ROC curve and confusion matrix</h2><div class=figs>'
                 f'<a href="roc.png">{_img(roc, "ROC curve")}</a>'
                 f'<a href="confusion.png">{_img(confusion, "confusion matrix")}</a></div>')
    parts.append(
        "<h2>Definitions</h2><div class=note><ul><li>Predicted class: the class of highest probability.</li>"
        "<li>Sensitivity = TP/(TP+FN), specificity = TN/(TN+FP), one class against the rest; balanced accuracy = "
        "mean sensitivity over the classes with cases.</li><li>ROC AUC: the probability that a random case of the "
        "class scores higher than a random other case (ties count one half) = the area under the ROC curve. "
        f"95 % interval: percentile bootstrap over cases, {m.n_bootstrap} resamples, seed {s.seed}.</li>"
        "<li>ROC picture: the curve of the class's probability as the threshold falls; the dot is the argmax "
        "decision; the dashed diagonal is chance. Confusion matrix: rows are true classes, columns predicted, "
        "with the share of the row's cases. See docs/classification.md.</li></ul></div>")
    parts.append(_case_table(s, y, probs))
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>medpipe classification evaluation"
            f"</title><style>{_CSS}\n{_EXTRA_CSS}</style></head><body><main>{''.join(parts)}</main></body></html>\n")
