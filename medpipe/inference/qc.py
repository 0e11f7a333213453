"""Per-case quality control: what a reviewer needs to know about one predicted mask, and whether to look at it.

Per foreground label: volume (ml, from the source grid's voxel volume), connected components (26-connectivity),
whether it touches the field-of-view border, and on the network grid the highest mean probability and the mean
uncertainty (normalised entropy of the mean; mutual information) over the voxels predicted as that label.
Flags (thresholds in ``inference.qc``, docs/inference.md): an expected label empty, a volume outside the range
seen in training, a mask touching the border, many components, a low maximum probability, high uncertainty.
Any flag sets ``review: true``; ``reasons`` says why, one line per flag.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from medpipe.config import PipelineConfig
from medpipe.evaluation.lesions import label_components
from medpipe.io.geometry import Grid

QC_FORMAT = "medpipe-qc/1"
_STRUCTURE = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class LabelQC:
    """Measurements of one foreground label."""

    value: int
    name: str
    volume_ml: float
    components: int
    touches_border: bool
    max_probability: float | None
    mean_uncertainty: float | None
    mean_mutual_information: float | None
    training_volume_ml: tuple[float, float] | None


@dataclass(frozen=True)
class CaseQC:
    """QC of one case: per-label measurements, flags and the review decision."""

    labels: tuple[LabelQC, ...]
    reasons: tuple[str, ...] = field(default_factory=tuple)
    format: str = QC_FORMAT

    @property
    def review(self) -> bool:
        return bool(self.reasons)

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "review": self.review, "reasons": list(self.reasons),
                "labels": {str(lq.value): {k: list(v) if isinstance(v, tuple) else v
                                           for k, v in asdict(lq).items() if k != "value"} for lq in self.labels}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaseQC:
        def optional(v: Any) -> float | None:
            return None if v is None else float(v)

        labels = []
        for key, rec in data["labels"].items():
            rng = rec.get("training_volume_ml")
            labels.append(LabelQC(int(key), str(rec["name"]), float(rec["volume_ml"]), int(rec["components"]),
                                  bool(rec["touches_border"]), optional(rec.get("max_probability")),
                                  optional(rec.get("mean_uncertainty")), optional(rec.get("mean_mutual_information")),
                                  (float(rng[0]), float(rng[1])) if rng else None))
        return cls(tuple(labels), tuple(str(r) for r in data.get("reasons", ())), str(data.get("format", QC_FORMAT)))

    def summary(self) -> dict[str, Any]:
        """Flat columns for the batch table: review, reasons, volume per label."""
        row: dict[str, Any] = {"review": self.review, "qc_reasons": "; ".join(self.reasons)}
        for lq in self.labels:
            row[f"volume_ml_{lq.name}"] = lq.volume_ml
            row[f"components_{lq.name}"] = lq.components
        return row


def network_stats(mean: torch.Tensor, uncertainty: torch.Tensor | None, values: list[int]
                  ) -> dict[int, tuple[float | None, float | None, float | None]]:
    """Per label value: (max mean probability, mean normalised entropy, mean mutual information) over the
    network-grid voxels whose argmax is that label; Nones where it is never the argmax."""
    arg = mean.argmax(dim=0)
    out: dict[int, tuple[float | None, float | None, float | None]] = {}
    for v in values:
        sel = arg == v
        if not bool(sel.any()):
            out[v] = (None, None, None)
            continue
        pmax = float(mean[v][sel].max())
        if uncertainty is None:
            out[v] = (round(pmax, 4), None, None)
            continue
        unc = uncertainty.to(sel.device)
        out[v] = (round(pmax, 4), round(float(unc[0][sel].mean()), 4), round(float(unc[1][sel].mean()), 4))
    return out


def _touches_border(labels: np.ndarray, value: int) -> bool:
    for axis in range(3):
        for index in (0, labels.shape[axis] - 1):
            if bool((np.take(labels, index, axis=axis) == value).any()):
                return True
    return False


def case_qc(labels: np.ndarray, grid: Grid, cfg: PipelineConfig,
            net: dict[int, tuple[float | None, float | None, float | None]] | None = None,
            volume_ranges: dict[int, tuple[float, float]] | None = None) -> CaseQC:
    """QC of a mask (I, J, K) on ``grid``; ``net`` from :func:`network_stats`; ``volume_ranges`` (ml) per label
    value from training (:meth:`medpipe.inference.models.ModelSet.volume_ranges`)."""
    qc = cfg.inference.qc
    voxel_ml = abs(float(np.linalg.det(np.asarray(grid.affine)[:3, :3]))) / 1000.0
    # per label, not np.bincount (which casts the whole mask to intp: 8 bytes per voxel); find_objects takes the
    # mask's own integer type (no int32 copy)
    counts = {v: int(np.count_nonzero(labels == v)) for v in cfg.labels if v}
    boxes = ndimage.find_objects(labels)
    expected = (set(cfg.labels) - {0} if qc.expected_labels == "all" else
                set() if qc.expected_labels == "none" else set(qc.expected_labels) - {0})
    ranges = volume_ranges or {}
    out: list[LabelQC] = []
    reasons: list[str] = []
    for value, name in sorted(cfg.labels.items()):
        if value == 0:
            continue
        n = counts[value]
        components, border = 0, False
        if n:
            box = boxes[value - 1] if value - 1 < len(boxes) else None
            part = labels[box] == value if box is not None else labels == value
            components = label_components(part, _STRUCTURE)[1]
            border = _touches_border(labels, value)
        pmax, unc, mi = (net or {}).get(value, (None, None, None))
        rng = ranges.get(value)
        lq = LabelQC(value, name, round(n * voxel_ml, 3), components, border, pmax, unc, mi,
                     (round(rng[0], 3), round(rng[1], 3)) if rng else None)
        out.append(lq)
        reasons += _flags(lq, value in expected, cfg)
    return CaseQC(tuple(out), tuple(reasons))


def _flags(lq: LabelQC, expected: bool, cfg: PipelineConfig) -> list[str]:
    qc = cfg.inference.qc
    who = f"label {lq.value} ({lq.name})"
    if lq.volume_ml == 0:
        return [f"{who}: expected but empty"] if expected else []
    out = []
    if lq.training_volume_ml is not None:
        lo, hi = lq.training_volume_ml
        lo_ok, hi_ok = lo / (1.0 + qc.volume_margin), hi * (1.0 + qc.volume_margin)
        if not lo_ok <= lq.volume_ml <= hi_ok:
            out.append(f"{who}: volume {lq.volume_ml:.1f} ml outside the training range "
                       f"[{lo:.1f}, {hi:.1f}] ml (margin {qc.volume_margin:g})")
    if qc.flag_border and lq.touches_border:
        out.append(f"{who}: touches the field-of-view border")
    if lq.components > qc.max_components:
        out.append(f"{who}: {lq.components} connected components (more than {qc.max_components})")
    if lq.max_probability is not None and lq.max_probability < qc.min_max_probability:
        out.append(f"{who}: maximum probability {lq.max_probability:.2f} below {qc.min_max_probability:g}")
    if lq.mean_uncertainty is not None and lq.mean_uncertainty > qc.max_mean_uncertainty:
        out.append(f"{who}: mean uncertainty {lq.mean_uncertainty:.2f} above {qc.max_mean_uncertainty:g}")
    return out
