"""Per-case, per-region scoring of two integer label maps on one grid: the kernel behind ``evaluate``.

Each region is scored on the bounding box of its voxels in either map (found once per map with
``scipy.ndimage.find_objects``), never on the full grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage as ndi

from medpipe.evaluation.metrics.empty import DEFAULT_POLICY, EmptyPolicy, empty_case
from medpipe.evaluation.metrics.lesions import LesionRule, LesionScore, pad_box, score_lesions
from medpipe.evaluation.metrics.overlap import Overlap
from medpipe.evaluation.metrics.regions import Region, tolerance_for
from medpipe.evaluation.metrics.surface import surface_distances

#: Metric groups that ``metrics=`` accepts. ``"all"`` means every one but ``"lesions"``.
METRICS = ("dice", "iou", "hd", "hd95", "assd", "nsd", "volume", "confusion", "lesions")
_SURFACE = {"hd", "hd95", "assd", "nsd"}


@dataclass(frozen=True)
class MetricRow:
    """Metrics of one case and one label (or region). Distances in mm, volumes in mL, counts in voxels.

    ``None`` means "not computed" (not asked for); NaN means "undefined" under the empty policy.
    """

    case: str
    label: int
    label_name: str
    label_values: tuple[int, ...]
    empty: str
    dice: float | None = None
    iou: float | None = None
    hd_mm: float | None = None
    hd95_mm: float | None = None
    assd_mm: float | None = None
    nsd: float | None = None
    nsd_tol_mm: float | None = None
    ref_volume_ml: float | None = None
    pred_volume_ml: float | None = None
    volume_diff_ml: float | None = None
    tp_vox: int | None = None
    fp_vox: int | None = None
    fn_vox: int | None = None
    lesions: LesionScore | None = None

    def to_record(self) -> dict[str, object]:
        """A flat dict for CSV/JSON: lesion scores become ``lesion_*`` columns."""
        rec: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "label_values":
                rec[f.name] = "+".join(str(v) for v in value)
            elif f.name == "lesions":
                if value is not None:
                    rec.update(
                        lesion_dice=value.dice, lesion_hd95_mm=value.hd95_mm, lesion_sensitivity=value.sensitivity,
                        ref_lesions=value.n_ref, tp_lesions=value.tp, fn_lesions=value.fn, fp_lesions=value.fp,
                    )
            else:
                rec[f.name] = value
        return rec


def resolve_metrics(metrics: Iterable[str]) -> frozenset[str]:
    """Validate metric names; ``"all"`` expands to every metric except ``"lesions"``."""
    names = set(metrics)
    if "all" in names:
        names = (names - {"all"}) | (set(METRICS) - {"lesions"})
    unknown = names - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}, expected names from {METRICS} or 'all'")
    return frozenset(names)


def label_boxes(labels: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Bounding box of every positive label value in an integer map of shape (I, J, K)."""
    top = int(labels.max()) if labels.size else 0
    if top <= 0:
        return {}
    boxes = ndi.find_objects(labels if labels.dtype.kind in "iu" else labels.astype(np.int32), max_label=top)
    return {v: b for v, b in enumerate(boxes, start=1) if b is not None}


def _region_box(values: Sequence[int], *maps: dict[int, tuple[slice, ...]]) -> tuple[slice, ...] | None:
    found = [m[v] for m in maps for v in values if v in m]
    if not found:
        return None
    return tuple(slice(min(b[a].start for b in found), max(b[a].stop for b in found)) for a in range(3))


def _mask(labels: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    return labels == values[0] if len(values) == 1 else np.isin(labels, values)


def score_arrays(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: tuple[float, float, float],
    labels: dict[int, str] | Sequence[Region],
    *,
    metrics: Iterable[str] = ("dice",),
    case: str = "",
    policy: EmptyPolicy = DEFAULT_POLICY,
    surface: str = "surfel",
    nsd_tolerance_mm: float | dict[int, float] | None = None,
    lesion_rule: LesionRule | None = None,
) -> list[MetricRow]:
    """Score integer label maps ``pred`` and ``ref`` (shape (I, J, K), one grid, spacing in mm).

    ``labels`` maps label values to names (each scored on its own) or lists :class:`Region` groups.
    ``metrics`` picks groups from :data:`METRICS` (default Dice only: the fast path for training validation).
    Returns one :class:`MetricRow` per label/region, in the given order.
    """
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"pred {pred.shape} and ref {ref.shape} must be 3D arrays of one shape")
    wanted = resolve_metrics(metrics)
    if "lesions" in wanted and lesion_rule is None:
        lesion_rule = LesionRule()
    regions = [Region(v, n, (v,)) for v, n in labels.items()] if isinstance(labels, dict) else list(labels)
    spacing = (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))
    ref_boxes, pred_boxes = label_boxes(ref), label_boxes(pred)
    rows = []
    for region in regions:
        box = _region_box(region.values, ref_boxes, pred_boxes)
        if box is None:
            r = p = np.zeros((1, 1, 1), dtype=bool)
        else:
            if "lesions" in wanted and lesion_rule is not None:
                pad = lesion_rule.dilation_iterations + 1
                box = pad_box(box, pad, ref.shape)
            r, p = _mask(ref[box], region.values), _mask(pred[box], region.values)
        rows.append(_score_region(r, p, spacing, region, case, wanted, policy, surface, nsd_tolerance_mm, lesion_rule))
    return rows


def _score_region(
    r: np.ndarray,
    p: np.ndarray,
    spacing: tuple[float, float, float],
    region: Region,
    case: str,
    wanted: frozenset[str],
    policy: EmptyPolicy,
    surface: str,
    nsd_tolerance_mm: float | dict[int, float] | None,
    lesion_rule: LesionRule | None,
) -> MetricRow:
    ov = Overlap.of(r, p, spacing)
    kind = empty_case(ov.n_ref > 0, ov.n_pred > 0)
    values: dict[str, object] = {}
    if "dice" in wanted:
        values["dice"] = ov.dice() if kind == "none" else policy.overlap(kind)
    if "iou" in wanted:
        values["iou"] = ov.iou() if kind == "none" else policy.overlap(kind)
    if "volume" in wanted:
        values.update(ref_volume_ml=ov.ref_ml, pred_volume_ml=ov.pred_ml, volume_diff_ml=ov.pred_ml - ov.ref_ml)
    if "confusion" in wanted:
        values.update(tp_vox=ov.tp, fp_vox=ov.fp, fn_vox=ov.fn)
    if wanted & _SURFACE:
        tol = tolerance_for(region, nsd_tolerance_mm)
        if kind == "none":
            sd = surface_distances(r, p, spacing, surface)
            dist = {"hd": sd.hd, "hd95": sd.hd_percentile, "assd": sd.assd}
            values.update({f"{m}_mm": dist[m]() for m in ("hd", "hd95", "assd") if m in wanted})
            if "nsd" in wanted:
                values.update(nsd=sd.nsd(tol), nsd_tol_mm=tol)
        else:
            values.update({f"{m}_mm": policy.distance(kind) for m in ("hd", "hd95", "assd") if m in wanted})
            if "nsd" in wanted:
                values.update(nsd=policy.overlap(kind), nsd_tol_mm=tol)
    if "lesions" in wanted and lesion_rule is not None:
        values["lesions"] = score_lesions(r, p, spacing, lesion_rule)
    return MetricRow(case, region.id, region.name, region.values, kind, **values)  # type: ignore[arg-type]


def is_undefined(value: object) -> bool:
    """True for a NaN float (an undefined metric under the empty policy)."""
    return isinstance(value, float) and math.isnan(value)
