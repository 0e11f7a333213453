"""Voxel-overlap metrics: confusion counts, Dice, IoU and volumes, from two bool masks of one shape."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Overlap:
    """Voxel counts of a reference/prediction pair and the voxel volume (mm³) they were counted on."""

    tp: int
    fp: int
    fn: int
    voxel_mm3: float

    @classmethod
    def of(cls, ref: np.ndarray, pred: np.ndarray, spacing_mm: tuple[float, float, float]) -> Overlap:
        """Count true/false positives and false negatives of bool masks ``ref``, ``pred`` (same shape)."""
        n_ref, n_pred = int(np.count_nonzero(ref)), int(np.count_nonzero(pred))
        tp = int(np.count_nonzero(ref & pred)) if n_ref and n_pred else 0
        return cls(tp=tp, fp=n_pred - tp, fn=n_ref - tp, voxel_mm3=float(np.prod(spacing_mm)))

    @property
    def n_ref(self) -> int:
        return self.tp + self.fn

    @property
    def n_pred(self) -> int:
        return self.tp + self.fp

    def dice(self) -> float:
        """2·TP / (2·TP + FP + FN); NaN when both masks are empty (the empty policy decides)."""
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else float("nan")

    def iou(self) -> float:
        """TP / (TP + FP + FN) (Jaccard); NaN when both masks are empty."""
        denom = self.tp + self.fp + self.fn
        return self.tp / denom if denom else float("nan")

    @property
    def ref_ml(self) -> float:
        """Reference volume in millilitres (1 mL = 1000 mm³)."""
        return self.n_ref * self.voxel_mm3 / 1000.0

    @property
    def pred_ml(self) -> float:
        """Prediction volume in millilitres."""
        return self.n_pred * self.voxel_mm3 / 1000.0
