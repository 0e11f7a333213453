"""Lesion-wise scoring as in the BraTS-2023 rules (rachitsaluja/BraTS-2023-Metrics, ``metrics.py``).

1. Connected components (26-connectivity) of reference and prediction.
2. Reference lesions that lie within ``dilation_iterations`` dilations (18-connectivity structure) of each other
   are merged: each reference voxel takes the component id of the dilated reference.
3. A predicted component matches a reference lesion when it touches the lesion's dilation. Per reference lesion:
   Dice and HD95 (surface-distance convention) against the union of its matched components; a missed lesion
   scores Dice 0 and HD95 = ``penalty_hd95_mm``.
4. Predicted components that match no reference lesion are false positives: Dice 0, HD95 = penalty.
5. Reference lesions of volume ≤ ``min_volume_mm3`` are left out of the scores and counts (but still absorb the
   predictions that touch them).
Case score: sum over lesions / (counted lesions + false positives); 1 (Dice) and 0 (HD95) when both are zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medpipe.evaluation.metrics.surface import surface_distances

_S26 = ndi.generate_binary_structure(3, 3)
_S18 = ndi.generate_binary_structure(3, 2)


@dataclass(frozen=True)
class LesionRule:
    """Matching parameters. Defaults: BraTS-2023 GLI/SSA/PED (MEN and MET use 1 dilation; MET 2 mm³)."""

    name: str = "BraTS-2023 GLI"
    dilation_iterations: int = 3
    min_volume_mm3: float = 50.0
    penalty_hd95_mm: float = 374.0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LesionRule:
        return cls(str(d["name"]), int(d["dilation_iterations"]), float(d["min_volume_mm3"]),
                   float(d["penalty_hd95_mm"]))


BRATS_GLI_RULE = LesionRule()


@dataclass(frozen=True)
class LesionMatch:
    """One reference lesion: its volume (mm³), matched predicted components, Dice and HD95 (mm)."""

    ref_lesion: int
    volume_mm3: float
    pred_lesions: tuple[int, ...]
    dice: float
    hd95_mm: float
    counted: bool


@dataclass(frozen=True)
class LesionScore:
    """Lesion-wise result of one case and region. ``sensitivity`` = TP / (TP + FN), NaN with no lesion."""

    n_ref: int
    tp: int
    fn: int
    fp: int
    dice: float
    hd95_mm: float
    sensitivity: float
    matches: tuple[LesionMatch, ...]


def pad_box(box: tuple[slice, ...], pad: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(box, shape, strict=True))


def _union_box(boxes: list[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))


def score_lesions(
    ref: np.ndarray, pred: np.ndarray, spacing_mm: tuple[float, float, float], rule: LesionRule = BRATS_GLI_RULE
) -> LesionScore:
    """Lesion-wise Dice/HD95/counts of bool masks ``ref``, ``pred`` of shape (I, J, K) (see module doc)."""
    k = rule.dilation_iterations
    voxel_mm3 = float(np.prod(spacing_mm))
    pred_cc, n_pred = ndi.label(pred, structure=_S26)
    dilated = ndi.binary_dilation(ref, structure=_S18, iterations=k) if k > 0 else ref
    dil_cc, n_ref = ndi.label(dilated, structure=_S26)
    lesions = np.where(ref, dil_cc, 0)
    lesion_boxes = ndi.find_objects(lesions, max_label=n_ref)
    pred_boxes = ndi.find_objects(pred_cc, max_label=n_pred)
    matched: set[int] = set()
    matches = []
    for lesion_id, box in enumerate(lesion_boxes, start=1):
        if box is None:
            continue
        near = pad_box(box, k + 1, ref.shape)
        own = lesions[near] == lesion_id
        reach = ndi.binary_dilation(own, structure=_S18, iterations=k) if k > 0 else own
        hits = tuple(int(h) for h in np.unique(pred_cc[near][reach]) if h)
        matched.update(hits)
        full = _union_box([box] + [pred_boxes[h - 1] for h in hits])  # type: ignore[list-item]
        g = lesions[full] == lesion_id
        p = np.isin(pred_cc[full], hits) if hits else np.zeros_like(g)
        n_g, n_p, inter = int(g.sum()), int(p.sum()), int((g & p).sum())
        dice = 2 * inter / (n_g + n_p)
        hd95 = surface_distances(g, p, spacing_mm).hd_percentile(95) if n_p else rule.penalty_hd95_mm
        volume = n_g * voxel_mm3
        matches.append(LesionMatch(lesion_id, volume, hits, dice, hd95, volume > rule.min_volume_mm3))
    counted = [m for m in matches if m.counted]
    tp = sum(1 for m in counted if m.pred_lesions)
    fp = n_pred - len(matched)
    denom = len(counted) + fp
    dice = sum(m.dice for m in counted) / denom if denom else 1.0
    hd95 = (sum(m.hd95_mm for m in counted) + fp * rule.penalty_hd95_mm) / denom if denom else 0.0
    sensitivity = tp / len(counted) if counted else float("nan")
    return LesionScore(len(counted), tp, len(counted) - tp, fp, dice, hd95, sensitivity, tuple(matches))
