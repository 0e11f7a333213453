"""Per-label statistics over cases: mean, std, median, quartiles, extremes, and counts of empty/undefined cases."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medpipe.evaluation.metrics.empty import EMPTY_CASES
from medpipe.evaluation.metrics.scoring import MetricRow

#: Row fields summarised, in report order.
SUMMARY_FIELDS = (
    "dice", "iou", "hd_mm", "hd95_mm", "assd_mm", "nsd", "ref_volume_ml", "pred_volume_ml", "volume_diff_ml",
    "lesion_dice", "lesion_hd95_mm", "lesion_sensitivity",
)


def describe(values: Sequence[float]) -> dict[str, float | int | None]:
    """Statistics of the finite values; ``n_undefined`` counts NaNs (never silently dropped)."""
    arr = np.asarray(values, dtype=float)
    ok = arr[~np.isnan(arr)]
    stats: dict[str, float | int | None] = {"n": int(ok.size), "n_undefined": int(arr.size - ok.size)}
    if ok.size == 0:
        return stats | dict.fromkeys(("mean", "std", "median", "q1", "q3", "min", "max"))
    q1, med, q3 = np.percentile(ok, [25, 50, 75])
    return stats | {
        "mean": float(ok.mean()), "std": float(ok.std(ddof=1)) if ok.size > 1 else 0.0, "median": float(med),
        "q1": float(q1), "q3": float(q3), "min": float(ok.min()), "max": float(ok.max()),
    }


def summarize(rows: Sequence[MetricRow]) -> dict[str, dict[str, object]]:
    """Per label (keyed by the label id as a string): name, values, case counts per empty case, statistics."""
    out: dict[str, dict[str, object]] = {}
    for label in sorted({r.label for r in rows}):
        mine = [r for r in rows if r.label == label]
        records = [r.to_record() for r in mine]
        metrics = {}
        for name in SUMMARY_FIELDS:
            vals = [rec[name] for rec in records if rec.get(name) is not None]
            if vals:
                metrics[name] = describe([float(v) for v in vals])  # type: ignore[arg-type]
        entry: dict[str, object] = {
            "label_name": mine[0].label_name,
            "label_values": list(mine[0].label_values),
            "n_cases": len(mine),
            "empty": {kind: sum(1 for r in mine if r.empty == kind) for kind in EMPTY_CASES},
            "metrics": metrics,
        }
        lesion = [r.lesions for r in mine if r.lesions is not None]
        if lesion:
            tp, fn, fp = (sum(getattr(s, k) for s in lesion) for k in ("tp", "fn", "fp"))
            entry["lesions"] = {
                "ref_lesions": tp + fn, "tp": tp, "fn": fn, "fp": fp,
                "sensitivity": tp / (tp + fn) if tp + fn else None,
                "fp_per_case": fp / len(lesion),
            }
        out[str(label)] = entry
    return out


def json_safe(obj: object) -> object:
    """Replace NaN/inf floats by None (JSON has no NaN) recursively."""
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
