"""The one rule that says whether an image given to a CT model holds Hounsfield units.

A CT in HU holds air (about -1000) or at least fat (about -100) somewhere in its field of view, and its values span
hundreds of units. Three kinds of input break that and silently ruin a CT model's output (BAD-INPUTS N8):
normalised data (values span a few units), data rescaled to a display range such as uint8 0..255, and stored
values whose rescale intercept was lost (everything >= 0, soft tissue near 1000-1100). The DICOM reader and the
inference pre-flight both ask :func:`check_ct_hu`; there is no second rule (``medpipe info`` reads headers only).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Percentile span (p99 - p1) below which values are taken as normalised, not HU.
MIN_SPAN_HU = 20.0
#: A CT in HU has something at or below this value (fat is about -100, air about -1000).
MAX_MINIMUM_HU = -50.0


@dataclass(frozen=True)
class HuCheck:
    """Statistics of the judged channel and the verdict. ``problem`` says why it does not look like HU."""

    p1: float
    p99: float
    minimum: float
    maximum: float
    looks_like_hu: bool
    problem: str | None = None

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["min"] = out.pop("minimum")
        out["max"] = out.pop("maximum")
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HuCheck:
        problem = d.get("problem")
        return cls(float(d["p1"]), float(d["p99"]), float(d["min"]), float(d["max"]), bool(d["looks_like_hu"]),
                   str(problem) if problem is not None else None)

    def describe(self) -> str:
        return f"p1={self.p1:.1f}, p99={self.p99:.1f}, min={self.minimum:.1f}, max={self.maximum:.1f}"


def check_ct_hu(volume: np.ndarray, modality: str | None = None) -> HuCheck:
    """Judge a (I, J, K) volume that a CT model is about to see. ``modality`` (from a DICOM header, if any) turns
    the verdict into the plain statement that the input is not CT at all."""
    sample = np.asarray(volume)[::2, ::2, ::2]
    p1, p99 = (float(v) for v in np.percentile(sample, [1, 99]))
    lo, hi = float(np.min(volume)), float(np.max(volume))
    problem = None
    if modality and modality.upper() not in ("CT", "OT", ""):
        problem = f"the header says modality {modality.upper()}, not CT: this is a CT model"
    elif p99 - p1 < MIN_SPAN_HU:
        problem = f"its values span less than {MIN_SPAN_HU:g} units, as normalised data do"
    elif lo >= 0 and hi <= 255:
        problem = "all values lie in 0..255: rescaled to a display range (e.g. 8-bit), not HU"
    elif lo > MAX_MINIMUM_HU:
        problem = (f"nothing is at or below {MAX_MINIMUM_HU:g} (no air or fat): stored values without the rescale "
                   "intercept, or a crop inside soft tissue?")
    return HuCheck(round(p1, 1), round(p99, 1), round(lo, 1), round(hi, 1), problem is None, problem)
