"""Per-label statistics over cases: mean, std, median, quartiles, extremes, and counts of empty/undefined cases."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medpipe.evaluation.metrics.empty import EMPTY_CASES
from medpipe.evaluation.metrics.scoring import MetricRow
from medpipe.evaluation.result import LabelSummary, LesionTotals, MetricStats

#: Row fields summarised, in report order.
SUMMARY_FIELDS = (
    "dice", "iou", "hd_mm", "hd95_mm", "assd_mm", "nsd", "ref_volume_ml", "pred_volume_ml", "volume_diff_ml",
    "lesion_dice", "lesion_hd95_mm", "lesion_sensitivity",
)


def describe(values: Sequence[float]) -> MetricStats:
    """Statistics of the finite values; ``n_undefined`` counts NaNs (never silently dropped)."""
    arr = np.asarray(values, dtype=float)
    ok = arr[~np.isnan(arr)]
    if ok.size == 0:
        return MetricStats(0, int(arr.size))
    q1, med, q3 = np.percentile(ok, [25, 50, 75])
    return MetricStats(int(ok.size), int(arr.size - ok.size), float(ok.mean()),
                       float(ok.std(ddof=1)) if ok.size > 1 else 0.0, float(med), float(q1), float(q3),
                       float(ok.min()), float(ok.max()))


def summarize(rows: Sequence[MetricRow]) -> dict[int, LabelSummary]:
    """Per label id: name, values, case counts per empty case, statistics of every metric."""
    out: dict[int, LabelSummary] = {}
    for label in sorted({r.label for r in rows}):
        mine = [r for r in rows if r.label == label]
        records = [r.to_record() for r in mine]
        metrics = {}
        for name in SUMMARY_FIELDS:
            vals = [rec[name] for rec in records if rec.get(name) is not None]
            if vals:
                metrics[name] = describe([float(v) for v in vals])  # type: ignore[arg-type]
        lesion = [r.lesions for r in mine if r.lesions is not None]
        totals = None
        if lesion:
            tp, fn, fp = (sum(getattr(s, k) for s in lesion) for k in ("tp", "fn", "fp"))
            totals = LesionTotals(tp + fn, tp, fn, fp, tp / (tp + fn) if tp + fn else None, fp / len(lesion))
        out[label] = LabelSummary(mine[0].label_name, tuple(mine[0].label_values), len(mine),
                                  {kind: sum(1 for r in mine if r.empty == kind) for kind in EMPTY_CASES}, metrics,
                                  totals)
    return out
