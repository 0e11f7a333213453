"""What ``task: classification`` adds to the training loop: the loss (cross-entropy or focal) on case-level class
indices, and validation by ROC AUC and accuracy over the validation cases (gathered from every DDP rank).

The validation score that picks ``best.pt`` is the ROC AUC (two classes: of class 1; more: the macro mean of
the one-vs-rest AUCs); when it is undefined (a validation split holding one class only) the accuracy is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from monai.losses import FocalLoss
from torch import nn

from medpipe.config import PipelineConfig
from medpipe.evaluation.classification import classification_metrics
from medpipe.training.distributed import DistInfo, gather_objects

#: The focusing parameter of the focal loss (Lin et al. 2017's default).
FOCAL_GAMMA = 2.0


class ClassificationLoss(nn.Module):
    """Logits (B, K) and class indices (B,): cross-entropy, or MONAI's focal loss on softmax (``training.loss``)."""

    def __init__(self, cfg: PipelineConfig) -> None:
        super().__init__()
        self.focal = cfg.training.loss == "focal"
        self.loss: nn.Module = (FocalLoss(to_onehot_y=True, use_softmax=True, gamma=FOCAL_GAMMA) if self.focal
                                else nn.CrossEntropyLoss())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        y = target.long().reshape(-1)
        if self.focal:
            return self.loss(logits.float(), y[:, None])  # type: ignore[no-any-return]
        return self.loss(logits.float(), y)  # type: ignore[no-any-return]


def validation_score(metrics: dict[str, float]) -> float:
    """The number ``best.pt`` is chosen by: the AUC, or the accuracy where the AUC is undefined."""
    auc = metrics.get("auc", math.nan)
    return auc if not math.isnan(auc) else metrics.get("accuracy", math.nan)


def validate_classifier(net: nn.Module, val_ds: Any, cfg: PipelineConfig, device: str, dist: DistInfo,
                        amp_dtype: torch.dtype | None, on_case: Callable[[int, int], None]) -> dict[str, float]:
    """``{"auc": ..., "accuracy": ...}`` over every rank's validation cases (softmax of one forward pass each)."""
    net.eval()
    mine: list[tuple[int, list[float]]] = []
    with torch.no_grad(), torch.autocast(device_type="cuda", dtype=amp_dtype or torch.float16,
                                         enabled=amp_dtype is not None):
        n_val = len(val_ds)
        for i, item in enumerate(val_ds):
            logits = net(torch.as_tensor(item["image"])[None].to(device))
            mine.append((int(item["class"]), torch.softmax(logits.float(), dim=1)[0].cpu().tolist()))
            on_case(i + 1, n_val)
    rows = [r for part in gather_objects(mine, dist) for r in part]
    if not rows:
        return {"auc": math.nan, "accuracy": math.nan}
    y = [r[0] for r in rows]
    probs = np.asarray([r[1] for r in rows], dtype=float)
    m = classification_metrics(y, probs, cfg.classes, n_bootstrap=0)
    return {"auc": float(m.auc), "accuracy": float(m.accuracy)}
