"""Tiny models for the inference tests: saved random U-Nets (fold folders) and pointwise networks with known
outputs, wrapped into model sets without a checkpoint file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medpipe.config import PipelineConfig, config_from_dict
from medpipe.inference.models import LoadedModel, ModelSet
from medpipe.models.checkpoint import save_checkpoint
from medpipe.models.factory import build_model


def tiny_cfg(**sections: dict[str, Any]) -> PipelineConfig:
    raw: dict[str, Any] = {
        "labels": {0: "background", 1: "organ", 2: "core"},
        "transforms": {"spacing_mm": [1.5, 1.5, 2.5], "crop_foreground": False, "hu_window": [-200.0, 300.0]},
        "model": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
        "inference": {"roi_size_vox": [32, 32, 16], "sw_batch_size": 2, "overlap": 0.25},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config_from_dict(raw)


def save_fold_folders(root: Path, n_folds: int = 2, cfg: PipelineConfig | None = None) -> Path:
    """``root/fold_K/best.pt`` for K < n_folds: random tiny U-Nets (different seeds, same config)."""
    cfg = cfg or tiny_cfg()
    for k in range(n_folds):
        torch.manual_seed(100 + k)
        (root / f"fold_{k}").mkdir(parents=True, exist_ok=True)
        save_checkpoint(root / f"fold_{k}" / "best.pt", build_model(cfg), cfg,
                        label_volumes_ml={"1": [1.0, 50.0], "2": [0.1, 5.0]})
    return root


class Pointwise(nn.Module):
    """Per-voxel logits from the (windowed, 0..1) intensity: label 1 where x > threshold, 2 never; background
    otherwise. ``empty``: background everywhere. The output at a voxel depends on that voxel only, so sliding
    windows and exactly inverted flips leave it unchanged."""

    def __init__(self, threshold: float = 0.5, empty: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 3, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.copy_(torch.tensor([0.0, -20.0 * threshold, -10.0]))
            if not empty:
                self.conv.weight[1, 0] = 20.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def pointwise_set(cfg: PipelineConfig, *nets: nn.Module, volumes: dict[str, list[float]] | None = None) -> ModelSet:
    nets = nets or (Pointwise(),)
    return ModelSet(tuple(LoadedModel(n.eval(), cfg, Path(f"pointwise{i}.pt"), f"{i:064x}", None, volumes or {})
                          for i, n in enumerate(nets)))
