"""Network factory: MONAI UNet 3D, slice-wise 2D UNet, DynUNet, and for classification DenseNet121 and ResNet-18/50
(from the config); these and SegResNet and SwinUNETR by class name and arguments (from package manifests and
imported bundles)."""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import DenseNet121, DynUNet, ResNet, SegResNet, SwinUNETR, UNet
from torch import nn

from medpipe.config import ModelConfig, PipelineConfig
from medpipe.errors import CheckpointError
from medpipe.models.topology import dynunet_topology


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


def uses_deep_supervision(cfg: PipelineConfig) -> bool:
    """DynUNet with ``deep_supervision`` and at least 3 levels (2 upsamplings) returns the decoder outputs."""
    return cfg.model.arch == "dynunet" and cfg.model.deep_supervision and len(cfg.model.channels) >= 3


def network_spec(cfg: PipelineConfig) -> tuple[str, dict[str, Any], bool]:
    """The configured network as (MONAI class name, keyword arguments as JSON values, slice-wise 2D?)."""
    m: ModelConfig = cfg.model
    norm = "instance" if m.norm == "instance" else "batch"
    if m.arch in ("densenet121", "resnet18", "resnet50"):
        return classifier_spec(cfg)
    if m.arch in ("unet3d", "unet2d"):
        dims = 3 if m.arch == "unet3d" else 2
        args: dict[str, Any] = {
            "spatial_dims": dims, "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "channels": list(m.channels), "strides": list(m.strides), "num_res_units": m.num_res_units,
            "norm": norm, "dropout": m.dropout,
        }
        return "UNet", args, dims == 2
    kernels, strides = dynunet_topology(cfg.transforms.patch_size_vox, cfg.transforms.spacing_mm, len(m.channels))
    args = {
        "spatial_dims": 3, "in_channels": cfg.in_channels, "out_channels": cfg.out_channels, "kernel_size": kernels,
        "strides": strides, "upsample_kernel_size": strides[1:], "filters": list(m.channels), "norm_name": norm,
        "dropout": m.dropout or None, "deep_supervision": uses_deep_supervision(cfg),
        "deep_supr_num": max(1, min(2, len(m.channels) - 2)), "res_block": True,
    }
    return "DynUNet", args, False


#: MONAI's ResNet-18 / ResNet-50 (``monai.networks.nets.resnet18`` / ``resnet50``): block type and blocks per stage.
_RESNETS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet50": ("bottleneck", [3, 4, 6, 3])}


def classifier_spec(cfg: PipelineConfig) -> tuple[str, dict[str, Any], bool]:
    """A 3D classification network (``task: classification``): ``in_channels`` inputs, one logit per class.

    DenseNet121: MONAI's, init features 64 x ``width_factor`` and growth rate 32 x ``width_factor``. ResNet-18/50:
    MONAI's ``ResNet`` with the blocks of ``resnet18``/``resnet50``, widths 64-512 x ``width_factor``, and the
    standard stem (7-voxel convolution with stride 2, then max pooling)."""
    m = cfg.model
    w = m.width_factor
    if m.arch == "densenet121":
        return "DenseNet121", {"spatial_dims": 3, "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
                               "init_features": max(4, round(64 * w)), "growth_rate": max(4, round(32 * w)),
                               "dropout_prob": m.dropout}, False
    block, layers = _RESNETS[m.arch]
    return "ResNet", {"block": block, "layers": layers, "block_inplanes": [64, 128, 256, 512], "spatial_dims": 3,
                      "n_input_channels": cfg.in_channels, "num_classes": cfg.out_channels, "conv1_t_size": 7,
                      "conv1_t_stride": 2, "widen_factor": w,
                      "norm": ["instance", {"affine": True}] if m.norm == "instance" else "batch"}, False


def build_network(name: str, args: dict[str, Any], slice_wise: bool = False) -> nn.Module:
    """A MONAI network by class name (UNet, DynUNet, SegResNet, SwinUNETR) from keyword arguments (data only:
    a package manifest or an imported bundle names these, nothing else is ever instantiated)."""
    classes: dict[str, type[nn.Module]] = {"UNet": UNet, "DynUNet": DynUNet, "SegResNet": SegResNet,
                                            "SwinUNETR": SwinUNETR, "DenseNet121": DenseNet121, "ResNet": ResNet}
    if name not in classes:
        raise CheckpointError(f"unknown architecture '{name}'", hint="one of " + ", ".join(classes))
    try:
        net = classes[name](**args)
    except (TypeError, ValueError, AssertionError) as err:
        raise CheckpointError(f"cannot build {name} from its arguments: {str(err)[:200]}") from err
    return SliceWise2D(net) if slice_wise else net


def build_model(cfg: PipelineConfig) -> nn.Module:
    """The configured network: ``in_channels`` inputs, ``out_channels`` logits (classes, or regions); a
    classifier returns (B, classes) logits."""
    return build_network(*network_spec(cfg))
