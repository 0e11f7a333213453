"""Grad-CAM of 3D classifiers (MONAI ResNet-18, DenseNet121 built directly): the layer chosen, the map on the input
grid, and, on a toy problem whose discriminating blob is known, a map that peaks at that blob."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet121, resnet18
from typer.testing import CliRunner

from medpipe.cli import app
from medpipe.config import config_from_dict
from medpipe.errors import InputError
from medpipe.explain.classify import classifier_cam, classifier_layer
from medpipe.models.checkpoint import save_checkpoint
from medpipe.models.factory import build_model
from tests.conftest import make_affine, save_nifti, sphere_phantom

N = 32
#: Blob centres: the centres of the eight octants of the N^3 volume.
CENTRES = [(x, y, z) for x in (8, 24) for y in (8, 24) for z in (8, 24)]


def ball(centre: tuple[int, int, int], radius: float = 4.0) -> np.ndarray:
    grid = np.indices((N, N, N)).transpose(1, 2, 3, 0)
    return (np.linalg.norm(grid - np.asarray(centre), axis=-1) <= radius).astype(np.float32)


def toy_case(rng: np.random.Generator, label: int) -> np.ndarray:
    """(1, N, N, N): noise and a dark blob in every case (the confounder); class 1 adds a bright blob, in another
    octant chosen at random."""
    bright, dark = rng.permutation(len(CENTRES))[:2]
    image = rng.normal(0.0, 0.2, (N, N, N)).astype(np.float32) - ball(CENTRES[dark])
    if label:
        image += ball(CENTRES[bright])
    return image[None]


def small_resnet18() -> torch.nn.Module:
    return resnet18(spatial_dims=3, n_input_channels=1, num_classes=2, widen_factor=0.125, no_max_pool=True)


def test_layer_is_the_last_spatial_feature_map_and_the_map_is_on_the_input_grid() -> None:
    torch.manual_seed(0)
    image = torch.randn(1, N, N, N)
    dense = DenseNet121(spatial_dims=3, in_channels=1, out_channels=3, init_features=8, growth_rate=4)
    res = small_resnet18().train()
    before = res.bn1.running_mean.clone()
    assert classifier_layer(res, image) == "layer4"  # 2^3 voxels; the pooling after it: 1 voxel
    assert res.training and torch.equal(res.bn1.running_mean, before)  # probed in eval mode, mode restored
    assert classifier_layer(dense, torch.randn(1, 64, 64, 64)) == "class_layers.relu"
    cam, cls, layer = classifier_cam(dense, torch.randn(1, 64, 48, 40), class_index=2)
    assert cam.shape == (64, 48, 40) and cls == 2 and layer == "class_layers.relu"
    assert cam.dtype == np.float32 and 0.0 <= cam.min() and cam.max() <= 1.0
    with pytest.raises(InputError, match="class 3 out of range"):
        classifier_cam(dense, torch.randn(1, 64, 48, 40), class_index=3)
    with pytest.raises(InputError, match="no layer 'nope'"):
        classifier_cam(dense, torch.randn(1, 64, 48, 40), layer="nope")


@pytest.mark.slow
def test_trained_classifier_map_peaks_at_the_discriminating_blob() -> None:
    """Trained briefly to tell "bright blob present" from "absent" with a dark blob in both classes, the network's
    Grad-CAM for the predicted class on a new case must peak in the bright blob's octant and be low at the dark
    blob (an untrained or mis-upsampled map fails this)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = small_resnet18()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(12):
        labels = rng.integers(0, 2, 8)
        x = torch.from_numpy(np.stack([toy_case(rng, int(v)) for v in labels]))
        loss = torch.nn.functional.cross_entropy(net(x), torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    image = np.random.default_rng(5).normal(0.0, 0.2, (N, N, N)).astype(np.float32)
    image += ball((8, 8, 24)) - ball((24, 24, 8))
    cam, cls, layer = classifier_cam(net, torch.from_numpy(image[None]))
    assert cls == 1 and layer == "layer4"
    peak = np.unravel_index(int(cam.argmax()), cam.shape)
    print(f"peak {tuple(int(v) for v in peak)}, bright {cam[8, 8, 24]:.2f}, dark {cam[24, 24, 8]:.2f}")
    assert peak[0] < 16 and peak[1] < 16 and peak[2] >= 16, peak  # the bright blob's octant
    assert cam[8, 8, 24] > 0.5 and cam[24, 24, 8] < 0.5 * cam[8, 8, 24]


def test_medpipe_explain_on_a_classifier_writes_gradcam_on_the_source_grid(tmp_path: Path) -> None:
    """``medpipe explain RUN SCAN`` for a ``task: classification`` checkpoint: no --label, the predicted class by
    default, --class picks another; the map lands on the scan's (oblique) grid."""
    cfg = config_from_dict({
        "task": "classification", "classes": ["clear", "block"], "modality": "CT", "channels": ["CT"],
        "labels": {0: "background", 1: "body", 2: "block"},
        "data": {"root": str(tmp_path), "format": "kits", "class_from_label": {"label": 2, "min_voxels": 5}},
        "transforms": {"spacing_mm": [1.5, 1.5, 3.0], "patch_size_vox": [32, 32, 16], "crop_foreground": False},
        "model": {"arch": "resnet18", "width_factor": 0.125, "norm": "batch"},
    })
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "best.pt", build_model(cfg), cfg)
    aff = make_affine((2, 0, 1), (-1, 1, -1), (0.9, 1.3, 2.5), (8, -5, 12), (12.0, -40.0, 30.0))
    image, _ = sphere_phantom((40, 36, 16), aff)
    scan = save_nifti(tmp_path / "case_a.nii.gz", image, aff, np.int16)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["explain", str(tmp_path / "best.pt"), str(scan), "-o", str(out)])
    assert res.exit_code == 0, res.output
    (record_path,) = out.glob("case_a.*.explain.json")
    record = json.loads(record_path.read_text())
    assert record["target"] == "predicted class" and record["weighting"] == "gradcam"
    assert record["layer"] == "layer3"  # the standard stem (with max pooling) leaves layer4 at 1 voxel for 32x32x16
    img = nib.load(str(out / record["files"]["gradcam_nifti"]))
    assert img.shape == (40, 36, 16) and np.allclose(img.affine, aff, atol=1e-4)
    data = np.asarray(img.dataobj)
    assert data.dtype == np.float32 and 0.0 <= data.min() and data.max() <= 1.0
    assert (out / record["files"]["gradcam_png"]).read_bytes()[:4] == b"\x89PNG"
    other = 1 - int(record["label"])
    res = CliRunner().invoke(app, ["explain", str(tmp_path / "best.pt"), str(scan), "-o", str(out), "--class",
                                   cfg.classes[other]])
    assert res.exit_code == 0, res.output
    again = json.loads((out / f"case_a.{cfg.classes[other]}.explain.json").read_text())
    assert again["label"] == other and again["target"] == "given class"
    bad = CliRunner().invoke(app, ["explain", str(tmp_path / "best.pt"), str(scan), "-o", str(out), "--label", "1"])
    assert bad.exit_code == 1 and "this model is a classifier" in bad.output
    bad = CliRunner().invoke(app, ["explain", str(tmp_path / "best.pt"), str(scan), "-o", str(out), "--class", "x"])
    assert bad.exit_code == 1 and "0=clear, 1=block" in bad.output
