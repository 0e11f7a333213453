"""Network factory (MONAI UNet 3D, slice-wise 2D UNet, DynUNet) and safe checkpoint save/load.

Checkpoints are plain dicts of tensors and primitives, written atomically and read with
``torch.load(weights_only=True)`` only: a checkpoint can never run code when it is loaded.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import DynUNet, UNet
from torch import nn

from medpipe.config import ModelConfig, PipelineConfig, config_from_dict
from medpipe.errors import CheckpointError
from medpipe.io.atomic import atomic_path

CHECKPOINT_FORMAT = "medpipe-checkpoint/1"


class SliceWise2D(nn.Module):
    """Apply a 2D network to every slice of a (B, C, H, W, D) volume; returns (B, K, H, W, D).

    Lets 2D models share the 3D data pipeline, sliding window and export unchanged.
    """

    def __init__(self, net2d: nn.Module) -> None:
        super().__init__()
        self.net2d = net2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w, d = x.shape
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
        out = self.net2d(slices)
        k = out.shape[1]
        return out.reshape(b, d, k, h, w).permute(0, 2, 3, 4, 1)


def dynunet_topology(patch_size: tuple[int, ...], spacing: tuple[float, ...], depth: int) -> tuple[list, list]:
    """nnU-Net-style kernels and strides: stride 2 along an axis while it is not much coarser than the finest
    axis and its size allows; 3x3x3 kernels, 1 along axes that are too anisotropic at that level."""
    sizes, spac = list(patch_size), list(spacing)
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1, 1, 1]]
    for _ in range(depth - 1):
        finest = min(spac)
        stride = [2 if (s <= 2 * finest and n >= 8) else 1 for s, n in zip(spac, sizes, strict=False)]
        kernels.append([3 if s <= 2 * finest else 1 for s in spac])
        strides.append(stride)
        sizes = [n // st for n, st in zip(sizes, stride, strict=False)]
        spac = [s * st for s, st in zip(spac, stride, strict=False)]
    kernels.append([3, 3, 3])
    return kernels, strides


def uses_deep_supervision(cfg: PipelineConfig) -> bool:
    """DynUNet with ``deep_supervision`` and at least 3 levels (2 upsamplings) returns the decoder outputs."""
    return cfg.model.arch == "dynunet" and cfg.model.deep_supervision and len(cfg.model.channels) >= 3


def build_model(cfg: PipelineConfig) -> nn.Module:
    """The configured network: ``in_channels`` inputs, ``out_channels`` logits (classes, or regions)."""
    m: ModelConfig = cfg.model
    norm = "instance" if m.norm == "instance" else "batch"
    if m.arch in ("unet3d", "unet2d"):
        dims = 3 if m.arch == "unet3d" else 2
        net: nn.Module = UNet(
            spatial_dims=dims, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
            channels=m.channels, strides=m.strides, num_res_units=m.num_res_units, norm=norm, dropout=m.dropout,
        )
        return net if dims == 3 else SliceWise2D(net)
    kernels, strides = dynunet_topology(cfg.transforms.patch_size_vox, cfg.transforms.spacing_mm, len(m.channels))
    return DynUNet(
        spatial_dims=3, in_channels=cfg.in_channels, out_channels=cfg.out_channels, kernel_size=kernels,
        strides=strides, upsample_kernel_size=strides[1:], filters=list(m.channels), norm_name=norm,
        dropout=m.dropout or None, deep_supervision=uses_deep_supervision(cfg),
        deep_supr_num=max(1, min(2, len(m.channels) - 2)), res_block=True,
    )


def label_scores(logits: torch.Tensor, cfg: PipelineConfig) -> torch.Tensor:
    """Network output (K, X, Y, Z) -> per-label scores (``num_classes``, X, Y, Z), channel index = label value,
    whose argmax is the segmentation and whose channel 0 is above 0.5 exactly where background wins.

    Softmax models: the softmax. Region models (sigmoid outputs ``p_i`` in region order): with ``t_i = p_i - 0.5``
    the background scores ``1 - max_i p_i`` and the label decoded from region ``j`` scores
    ``0.5 + min(t_j, -max_{k>j} t_k)``; the argmax is then nnU-Net's decoding (a voxel takes the label of the last
    region above 0.5), the scores are continuous, so they can be resampled linearly onto another grid like
    probabilities, and labels that no region decodes to score -1.
    """
    if not cfg.regions:
        return torch.softmax(logits.float(), dim=0)
    p = torch.sigmoid(logits.float())
    t = p - 0.5
    out = torch.full((cfg.num_classes, *p.shape[1:]), -1.0, dtype=p.dtype, device=p.device)
    out[0] = 1.0 - p.max(dim=0).values
    order = cfg.region_order()
    for j, (_, _, value) in enumerate(order):
        score = t[j]
        if j + 1 < len(order):
            score = torch.minimum(score, -t[j + 1:].max(dim=0).values)
        out[value] = 0.5 + score
    return out


def region_targets(labels: torch.Tensor, cfg: PipelineConfig) -> torch.Tensor:
    """Label maps (B, 1, X, Y, Z) -> region masks (B, R, X, Y, Z) float, one channel per region in order."""
    masks = [torch.isin(labels, torch.tensor(values, device=labels.device, dtype=labels.dtype))
             for values in cfg.regions.values()]
    return torch.cat(masks, dim=1).to(torch.float32)


def save_checkpoint(path: str | Path, model: nn.Module, cfg: PipelineConfig, **extra: Any) -> None:
    """Write state dict + resolved config + label map (+ optimizer/scheduler/epoch/... in ``extra``) atomically."""
    inner = getattr(model, "module", None)  # DistributedDataParallel wraps the network
    module = inner if isinstance(inner, nn.Module) else model
    payload = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "config": cfg.to_dict(),
        "labels": {str(k): v for k, v in cfg.labels.items()},
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; refuse corrupt, foreign or unsafe files."""
    path = Path(path)
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "").strip() not in ("", "0"):
        raise CheckpointError(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set; medpipe refuses to load checkpoints unsafely",
            path=path, hint="unset the variable",
        )
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path=path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else "unsafe content"
        raise CheckpointError(f"refused: not a plain weights file ({first})", path=path) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"corrupt or truncated checkpoint ({str(err).splitlines()[0][:160]})", path=path) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"not a medpipe checkpoint (expected format {CHECKPOINT_FORMAT})", path=path)
    return ckpt


def config_of(ckpt: dict[str, Any], path: str | Path) -> PipelineConfig:
    """The resolved config stored in a checkpoint."""
    cfg = dict(ckpt["config"])
    cfg["labels"] = {int(k): v for k, v in cfg["labels"].items()}
    return config_from_dict(cfg, source=f"{path} (stored config)")


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, PipelineConfig]:
    """Rebuild the network from a checkpoint and load its weights strictly."""
    ckpt = load_checkpoint(path)
    cfg = config_of(ckpt, path)
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"weights do not fit the stored architecture: {str(err)[:300]}", path=path) from err
    return model.to(device).eval(), cfg
