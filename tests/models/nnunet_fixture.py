"""A tiny nnU-Net v2 result folder built in a test: plans.json, dataset.json, fold_0/checkpoint_final.pth.

The checkpoint has nnU-Net's layout (network_weights, optimizer_state, logging, init_args with the plans and a
torch.device, trainer_name, inference_allowed_mirroring_axes) and a freshly initialised PlainConvUNet from
dynamic-network-architectures. Images are anisotropic, oblique and flipped, with a zero frame so that the
crop to non-zero, the axis transpose and the separate-z resampling are all exercised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

ARCH: dict[str, Any] = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3], [3, 1, 3], [3, 3, 3]], "strides": [[1, 1, 1], [2, 1, 2], [2, 2, 2]],
        "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


def plans(schemes: tuple[str, ...] = ("CTNormalization",)) -> dict[str, Any]:
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [20, 12, 20], "median_image_size_in_voxels": [26, 18, 26],
        "spacing": [0.8, 2.0, 0.8], "normalization_schemes": list(schemes),
        "use_mask_for_norm": [s == "ZScoreNormalization" for s in schemes],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": ARCH, "batch_dice": False,
    }
    props = {str(c): {"max": 300.0, "mean": 60.0, "median": 55.0, "min": -200.0, "percentile_00_5": -80.0,
                      "percentile_99_5": 240.0, "std": 45.0} for c in range(len(schemes))}
    return {
        "dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [0.8, 2.0, 0.8], "original_median_shape_after_transp": [26, 18, 26],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [2, 0, 1], "transpose_backward": [1, 2, 0],
        "configurations": {"3d_fullres": config}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": props,
    }


def dataset(regions: bool = False, channels: tuple[str, ...] = ("CT",)) -> dict[str, Any]:
    labels: dict[str, Any] = ({"background": 0, "whole": [1, 2], "core": 2} if regions
                              else {"background": 0, "kidney": 1, "tumor": 2})
    data: dict[str, Any] = {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": labels,
                            "numTraining": 1, "file_ending": ".nii.gz"}
    if regions:
        data["regions_class_order"] = [1, 2]
    return data


def make_result_folder(root: Path, *, regions: bool = False, folds: tuple[int, ...] = (0,), seed: int = 0,
                       schemes: tuple[str, ...] = ("CTNormalization",)) -> Path:
    """Write DatasetXXX/nnUNetTrainer__nnUNetPlans__3d_fullres with a freshly initialised network per fold."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    folder = root / "Dataset999_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True, exist_ok=True)
    p, d = plans(schemes), dataset(regions, tuple("CT" if s == "CTNormalization" else "MR" for s in schemes))
    (folder / "plans.json").write_text(json.dumps(p, indent=2))
    (folder / "dataset.json").write_text(json.dumps(d, indent=2))
    kwargs = dict(ARCH["arch_kwargs"])
    kwargs.update(conv_op=torch.nn.Conv3d, norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU)
    n_out = 2 if regions else 3
    for f in folds:
        torch.manual_seed(seed + f)
        net = PlainConvUNet(input_channels=len(schemes), num_classes=n_out, deep_supervision=False, **kwargs)
        net.apply(net.initialize)
        with torch.no_grad():  # break symmetry so that every label occurs
            net.decoder.seg_layers[-1].bias.copy_(torch.linspace(0.4, -0.4, n_out))
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
        ckpt = {
            "network_weights": net.state_dict(), "optimizer_state": opt.state_dict(), "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [0.5], "dice_per_class_or_region": [[0.5]],
                        "train_losses": [np.float64(-0.1)], "val_losses": [np.float64(-0.1)], "lrs": [0.01],
                        "epoch_start_timestamps": [1.0], "epoch_end_timestamps": [2.0]},
            "_best_ema": None, "current_epoch": 1,
            "init_args": {"plans": p, "configuration": "3d_fullres", "fold": f, "dataset_json": d,
                          "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2),
        }
        (folder / f"fold_{f}").mkdir(exist_ok=True)
        torch.save(ckpt, folder / f"fold_{f}" / "checkpoint_final.pth")
    return folder


def oblique_affine(zooms: tuple[float, float, float], flip: bool) -> np.ndarray:
    theta = 0.3
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1.0]])
    if flip:
        rot = rot @ np.diag([-1.0, 1.0, 1.0])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(zooms)
    aff[:3, 3] = [12.5, -30.0, 7.25]
    return aff


def make_image(path: Path, seed: int, shape: tuple[int, int, int] = (30, 28, 14),
               zooms: tuple[float, float, float] = (0.7, 0.75, 2.5), flip: bool = True) -> Path:
    """A CT-like int16 volume: two blobs in soft tissue with a zero frame (cropped by nnU-Net)."""
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    vol = 40 + 15 * rng.standard_normal(shape)
    vol[(ii - 0.2) ** 2 + jj ** 2 + (kk * 0.8) ** 2 < 0.25] += 120
    vol[(ii + 0.4) ** 2 + (jj - 0.3) ** 2 + kk ** 2 < 0.08] += 200
    vol[:2] = 0
    vol[:, -3:] = 0
    img = nib.Nifti1Image(np.round(vol).astype(np.int16), oblique_affine(zooms, flip))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))
    return path
