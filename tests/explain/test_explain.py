"""Explanation maps: windows bounded around the structure, maps on the scan's own (oblique) grid, CLI errors, and
the sanity check that a trained kidney model attributes near the kidney while the same model with shuffled
weights does not."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from typer.testing import CliRunner

from medpipe.cli import app
from medpipe.config import config_from_dict, load_config
from medpipe.explain.cam import forward_shapes
from medpipe.explain.maps import body_support, default_layer, explain_network, windows
from medpipe.explain.run import ExplainResult
from medpipe.models.checkpoint import save_checkpoint
from medpipe.models.factory import build_model
from tests.conftest import REPO, make_affine, save_nifti, sphere_phantom

TINY = {
    "labels": {0: "background", 1: "organ", 2: "core"},
    "transforms": {"spacing_mm": [2.0, 2.0, 2.5], "crop_foreground": False},
    "model": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0},
    "inference": {"roi_size_vox": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.0},
}


def test_windows_stay_around_the_structure() -> None:
    mask = np.zeros((200, 200, 100), bool)
    mask[90:100, 50:58, 40:44] = True
    starts = windows(mask, (32, 32, 16), margin_vox=4, overlap=0.25)
    assert len(starts) == 1  # a 10 x 8 x 4 structure + margins fits one window: memory is one window's
    (x, y, z), = starts
    assert x <= 86 and x + 32 >= 104 and y <= 46 and y + 32 >= 62 and z <= 36 and z + 16 >= 48
    mask[10, 10, 10] = True  # the box now spans most of the volume: windows tile it, each inside the volume
    tiles = windows(mask, (32, 32, 16), margin_vox=4, overlap=0.25)
    assert len(tiles) > 1 and all(0 <= s[a] <= mask.shape[a] - (32, 32, 16)[a] for s in tiles for a in range(3))


@pytest.mark.parametrize(("res_units", "strides", "expected"), [
    (0, [2, 2], "model.1.submodule.2"),  # the up-sampling Convolution (transposed conv + norm + activation)
    (1, [2, 2], "model.1.submodule.2.0"),  # the same, inside the up block (its residual unit follows)
    (1, [2, 2, 2], "model.1.submodule.2.0"),  # four levels: still the up-sampling into half resolution
    (1, [2], "model.1"),  # two levels: no up-sampling into half resolution; the last half-resolution module
])
def test_default_layer_is_the_upsampling_into_half_resolution(res_units: int, strides: list[int],
                                                               expected: str) -> None:
    channels = [4, 8, 16, 32][:len(strides) + 1]
    cfg = config_from_dict({**TINY, "model": {"channels": channels, "strides": strides, "num_res_units": res_units}})
    model = build_model(cfg)
    assert default_layer(model, (16, 16, 16), 1) == expected
    shapes = {n: o for n, _, o in forward_shapes(model, torch.zeros(1, 1, 16, 16, 16))}
    assert shapes[expected][2:] == (8, 8, 8)


def test_body_support_keeps_attribution_off_air_and_padding() -> None:
    """A body (soft tissue with an air pocket inside) in air: the support is the body, holes filled, plus the
    dilation; the air around it is out. The same for z-scored MRI, whose background (0) is not its minimum."""
    image = torch.zeros(1, 30, 30, 20)
    image[0, 5:25, 5:25, 3:17] = 0.6
    image[0, 12:16, 12:16, 8:12] = 0.0  # air inside the body (bowel gas): kept
    support = body_support(image, dilate_vox=1)
    body = np.zeros((30, 30, 20), bool)
    body[5:25, 5:25, 3:17] = True
    far = ndi.distance_transform_edt(~body) > 1.5
    assert support[body].all() and not support[far].any()
    assert support[4, 10, 10] and support[10, 10, 2] and not support[4, 4, 10]  # face neighbours in, corners out
    assert body_support(torch.full((1, 8, 8, 8), 3.0)).all()  # a constant image: no background to tell
    assert body_support(torch.rand(1, 8, 8, 8)).all()  # continuous intensities everywhere: no background either
    mri = torch.randn(1, 30, 30, 20)  # z-scored tissue (negative values too) in an exactly-zero background
    mri[image == 0] = 0.0
    assert (body_support(mri, dilate_vox=1) == support).all()


def test_masked_target_ignores_scores_outside_the_mask() -> None:
    """The score is summed inside the mask: SmoothGrad of a two-conv net (3x3x3 kernels) is zero more than 2 voxels
    (chessboard distance) from the mask, whereas MONAI's default target (the whole volume) reaches everywhere."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 3, padding=1))
    target = np.zeros((16, 16, 16), bool)
    target[6:9, 6:9, 6:9] = True
    maps = explain_network(net, torch.randn(1, 16, 16, 16), target, 1, (16, 16, 16), layer="0", n_samples=2)
    far = ndi.distance_transform_cdt(~target, metric="chessboard") > 2
    assert maps.smoothgrad.max() == pytest.approx(1.0) and float(maps.smoothgrad[far].max()) == 0.0
    assert maps.cam.shape == (16, 16, 16) and maps.windows == 1 and maps.layer == "0"


def test_explain_writes_maps_on_the_oblique_source_grid(tmp_path: Path) -> None:
    cfg = config_from_dict(TINY)
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "best.pt", build_model(cfg), cfg)
    aff = make_affine((2, 0, 1), (-1, 1, -1), (0.9, 1.3, 2.5), (8, -5, 12), (12.0, -40.0, 30.0))
    image, labels = sphere_phantom((40, 36, 16), aff)
    scan = save_nifti(tmp_path / "case_a.nii.gz", image, aff, np.int16)
    seg = save_nifti(tmp_path / "case_a_seg.nii.gz", labels, aff, np.uint8)
    run = CliRunner().invoke(app, ["explain", str(tmp_path / "best.pt"), str(scan), "--label", "organ", "-o",
                                   str(tmp_path / "out"), "--mask", str(seg), "--samples", "2"])
    assert run.exit_code == 0, run.output
    for kind in ("hirescam", "smoothgrad"):
        img = nib.load(str(tmp_path / "out" / f"case_a.organ.{kind}.nii.gz"))  # read back with nibabel
        assert img.shape == (40, 36, 16) and np.allclose(img.affine, aff, atol=1e-4)
        data = np.asarray(img.dataobj)
        assert data.dtype == np.float32 and 0 <= data.min() and data.max() <= 1 and data.max() > 0
        assert (tmp_path / "out" / f"case_a.organ.{kind}.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((tmp_path / "out" / "case_a.organ.explain.json").read_text())
    assert record["label"] == 1 and "case_a_seg.nii.gz" in record["target"] and record["windows"] >= 1
    assert record["weighting"] == "hirescam" and record["layer"] == "model.1.submodule.2"  # see the test below
    assert record["layer_chosen"] == "automatic" and record["empty_maps"] == []
    assert ExplainResult.from_json(record).to_json() == {k: v for k, v in record.items()
                                                         if k not in ("model", "model_sha256", "input_sha256",
                                                                      "versions")}
    bad = CliRunner().invoke(app, ["explain", str(tmp_path / "best.pt"), str(scan), "--label", "organ", "-o",
                                   str(tmp_path / "out"), "--mask", str(seg), "--layer", "model.9"])
    assert bad.exit_code == 1 and "no layer 'model.9'" in bad.output and "model.1.submodule.2" in bad.output
    bad = CliRunner().invoke(app, ["explain", str(tmp_path / "best.pt"), str(scan), "--label", "liver", "-o",
                                   str(tmp_path / "out")])
    assert bad.exit_code == 1 and "not a foreground label" in bad.output and "1=organ" in bad.output


def attribution_near(path: Path, mask: np.ndarray, affine: np.ndarray, mm: float) -> float:
    """Fraction of the map's total (positive) attribution within ``mm`` of ``mask``."""
    data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    near = ndi.distance_transform_edt(~mask, sampling=spacing) <= mm
    return float(data[near].sum() / data.sum())


@pytest.mark.slow
def test_trained_kidney_model_attributes_near_the_kidney_and_shuffled_weights_do_not(tmp_path: Path) -> None:
    """Train a small model on the sample CT, explain "kidney" on a held-out case (score inside the reference kidney,
    so both models explain the same region), and compare with the same network with each weight tensor shuffled
    (Adebayo et al. 2018). Measured on 2 CPU cores (docs/explain.md): HiResCAM at the automatic layer puts 0.97 of
    its mass within 10 mm of the kidney for the trained model and 0.23 for the shuffled one; the thresholds are
    0.8 and 0.5, and at least 0.3 apart. SmoothGrad (0.77 vs 0.65) does not separate them clearly: printed, not
    asserted. The thresholds hold for this model: permuting a better-trained one's weights leaves 0.66-0.68 near
    the kidney (docs/explain.md)."""
    from medpipe.training.run import train

    cfg = load_config(REPO / "pipelines" / "sample-ct.yaml").with_overrides(
        model={"channels": (8, 16, 32), "strides": (2, 2)},
        training={"epochs": 4, "iterations_per_epoch": 12, "val_every": 4, "lr": 0.01})
    train(cfg, tmp_path / "run", device="cpu")
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    shuffled = {k: (v.flatten()[torch.randperm(v.numel(), generator=gen)].view_as(v) if v.is_floating_point() else v)
                for k, v in state["state_dict"].items()}
    torch.save({**state, "state_dict": shuffled}, tmp_path / "shuffled.pt")
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    case = REPO / "sample_data" / "kits" / split["val"][0]
    ref = nib.load(str(case / "segmentation.nii.gz"))
    kidney = np.asarray(ref.dataobj) == 1
    fractions: dict[str, dict[str, float]] = {}
    for name, model in (("trained", tmp_path / "run" / "best.pt"), ("shuffled", tmp_path / "shuffled.pt")):
        run = CliRunner().invoke(app, ["explain", str(model), str(case / "imaging.nii.gz"), "--label", "kidney",
                                       "-o", str(tmp_path / name), "--mask", str(case / "segmentation.nii.gz"),
                                       "--samples", "4"])
        assert run.exit_code == 0, run.output
        record = json.loads(next((tmp_path / name).glob("*.explain.json")).read_text())
        assert record["layer"] == "model.1.submodule.2.0" and record["layer_chosen"] == "automatic"
        fractions[name] = {kind: attribution_near(next((tmp_path / name).glob(f"*.kidney.{kind}.nii.gz")), kidney,
                                                  ref.affine, 10.0) for kind in ("hirescam", "smoothgrad")}
    print(f"attribution within 10 mm of the kidney: {fractions}")
    trained, shuffled_net = fractions["trained"]["hirescam"], fractions["shuffled"]["hirescam"]
    assert trained > 0.8
    assert shuffled_net < 0.5 and shuffled_net < trained - 0.3
