"""The empty-mask policy: what each metric returns when the reference and/or the prediction is empty.

Every row carries its case (``"none"``, ``"both"``, ``"ref"`` or ``"pred"`` empty), the summary counts each case
per label, and the report prints :meth:`EmptyPolicy.describe`. Nothing is dropped from a mean without being
counted: a NaN ("undefined") value is excluded from that metric's statistics and reported as ``n_undefined``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

EMPTY_CASES = ("none", "both", "ref", "pred")


def empty_case(ref_any: bool, pred_any: bool) -> str:
    """``"none"`` when both masks have voxels, else ``"both"``, ``"ref"`` or ``"pred"`` (which one is empty)."""
    if ref_any and pred_any:
        return "none"
    if not ref_any and not pred_any:
        return "both"
    return "ref" if not ref_any else "pred"


@dataclass(frozen=True)
class EmptyPolicy:
    """Values returned when a mask is empty. Overlap metrics: Dice, IoU, NSD. Distances: HD, HD95, ASSD (mm).

    The default follows KiTS23 and BraTS-2023 for overlap (both empty = 1, one empty = 0), scores two empty
    masks as distance 0, and leaves distances undefined (NaN, counted) when only one mask is empty: there is
    no surface to measure to. ``brats`` replaces that NaN by BraTS's 374 mm penalty.
    """

    name: str = "default"
    both_empty_overlap: float = 1.0
    both_empty_distance_mm: float = 0.0
    one_empty_overlap: float = 0.0
    one_empty_distance_mm: float = math.nan

    def overlap(self, case: str) -> float:
        """Dice/IoU/NSD for an empty ``case`` (``"both"``, ``"ref"`` or ``"pred"``)."""
        return self.both_empty_overlap if case == "both" else self.one_empty_overlap

    def distance(self, case: str) -> float:
        """HD/HD95/ASSD (mm) for an empty ``case``."""
        return self.both_empty_distance_mm if case == "both" else self.one_empty_distance_mm

    def describe(self) -> list[str]:
        """Plain sentences for the report."""

        def val(x: float, unit: str = "") -> str:
            return "undefined (NaN, counted, left out of the mean)" if math.isnan(x) else f"{x:g}{unit}"

        return [
            f"Both masks empty: Dice, IoU and NSD = {val(self.both_empty_overlap)}; "
            f"HD, HD95 and ASSD = {val(self.both_empty_distance_mm, ' mm')}.",
            f"Reference empty, prediction not (false positive) or prediction empty, reference not (missed): "
            f"Dice, IoU and NSD = {val(self.one_empty_overlap)}; HD, HD95 and ASSD = "
            f"{val(self.one_empty_distance_mm, ' mm')}.",
        ]

    def to_json(self) -> dict[str, object]:
        """JSON-safe dict (NaN written as null)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EmptyPolicy:
        """The policy of :meth:`to_json` (null read back as NaN)."""

        def num(key: str) -> float:
            v = d[key]
            return math.nan if v is None else float(v)

        return cls(str(d["name"]), num("both_empty_overlap"), num("both_empty_distance_mm"),
                   num("one_empty_overlap"), num("one_empty_distance_mm"))


DEFAULT_POLICY = EmptyPolicy()
BRATS_POLICY = EmptyPolicy(name="brats", one_empty_distance_mm=374.0)
