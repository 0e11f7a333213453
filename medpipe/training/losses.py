"""Losses: Dice + cross-entropy over softmax classes, or Dice + BCE over sigmoid regions; with deep supervision
the loss is a weighted sum over the decoder outputs (weights 1, 1/2, 1/4, ... as in nnU-Net)."""

from __future__ import annotations

from typing import Any, cast

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceLoss
from torch import nn

from medpipe.config import PipelineConfig
from medpipe.labels import region_targets


class DiceBCELoss(nn.Module):
    """Soft Dice (sigmoid, every region channel) + binary cross-entropy, for overlapping region targets."""

    def __init__(self) -> None:

        super().__init__()
        self.dice = DiceLoss(sigmoid=True, include_background=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=True)
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, target) + self.bce(logits, target)


class SegmentationLoss(nn.Module):
    """Takes network output (a tensor, or a list of deep-supervision outputs) and the label map (B, 1, ...)."""

    def __init__(self, cfg: PipelineConfig, deep_supervision: bool) -> None:

        super().__init__()
        self.cfg = cfg
        base: nn.Module
        if cfg.regions:
            base = DiceBCELoss()
        else:
            base = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, smooth_nr=1e-5,
                              smooth_dr=1e-5)
        self.loss: Any = DeepSupervisionLoss(cast(Any, base), weight_mode="exp") if deep_supervision else base

    def forward(self, out: torch.Tensor | list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        target = region_targets(labels, self.cfg) if self.cfg.regions else labels
        return self.loss(out, target)
