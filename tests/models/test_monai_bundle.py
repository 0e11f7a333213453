"""MONAI bundle import: a bundle in the model-zoo layout (the spleen_ct_segmentation configs with a freshly
initialised, tiny network) is translated by reading its config as data, and medpipe's masks equal those of the
bundle run by MONAI's own ConfigParser (the reference run, here in the test only). Expressions and custom code in
the keys medpipe reads are refused, naming the key."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medpipe.cli import app
from medpipe.errors import ConfigError
from medpipe.models.factory import build_network
from medpipe.models.monai_bundle import import_monai_bundle
from medpipe.models.package import read_package
from tests.conftest import make_affine, save_nifti, sphere_phantom

runner = CliRunner()

#: configs/inference.json of the model zoo's spleen_ct_segmentation bundle (0.5.x), network made tiny.
SPLEEN_INFERENCE: dict[str, Any] = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "/workspace/data/Task09_Spleen",
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                    "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1, "norm": "batch"},
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1,
         "clip": True},
        {"_target_": "EnsureTyped", "keys": "image"},
    ]},
    "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                   "num_workers": 4},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 16], "sw_batch_size": 4, "overlap": 0.5},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "meta_key_postfix": "meta_dict", "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "separate_folder": False,
         "resample": False},
    ]},
    "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                  "load_dict": {"model": "@network"}}],
    "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                  "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                  "val_handlers": "@handlers", "amp": True},
    "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', True)"],
    "run": ["$@evaluator.run()"],
}
METADATA = {
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
    "version": "0.5.9", "monai_version": "1.3.0", "name": "Spleen CT segmentation",
    "license": "Apache-2.0", "eval_metrics": {"mean_dice": 0.96},
    "data_source": "Task09_Spleen.tar from http://medicaldecathlon.com/",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                             "channel_def": {"0": "background", "1": "spleen"}}},
    },
}
SEGRESNET = {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 4,
             "blocks_down": [1, 1, 1], "blocks_up": [1, 1], "dropout_prob": 0.0,
             "norm": ["GROUP", {"num_groups": 2}]}


def make_bundle(folder: Path, config: dict[str, Any], seed: int = 0) -> Path:
    """The model-zoo layout: configs/inference.json, configs/metadata.json, models/model.pt (a state dict)."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (folder / "configs" / "metadata.json").write_text(json.dumps(METADATA, indent=2))
    net_def = config["network_def"] if config["network_def"]["_target_"] in ("UNet", "SegResNet") else \
        SPLEEN_INFERENCE["network_def"]  # a custom network: weights of the standard one (refused before loading)
    torch.manual_seed(seed)
    net = build_network(net_def["_target_"], {k: v for k, v in net_def.items() if k != "_target_"})
    with torch.no_grad():  # batch-norm running statistics that are not the identity, so they matter
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


def monai_reference(bundle: Path, image: Path, out: Path) -> np.ndarray:
    """The bundle run by MONAI's ConfigParser: its network, preprocessing, inferer and postprocessing."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    parser["output_dir"] = str(out)
    parser["device"] = "$torch.device('cpu')"
    net = parser.get_parsed_content("network")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    net.eval()
    data = parser.get_parsed_content("preprocessing")({"image": str(image)})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], net)[0]
    data = parser.get_parsed_content("postprocessing")(data)
    return np.asarray(data["pred"][0]).astype(np.int16)


@pytest.fixture(scope="module")
def ct_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ct")
    aff = make_affine((2, 0, 1), (-1, 1, -1), (0.9, 1.3, 2.5), (8, -5, 12), (12.0, -40.0, 30.0))
    image, _ = sphere_phantom((40, 36, 16), aff)
    aff2 = make_affine(spacing=(1.2, 1.2, 3.0), flips=(-1, 1, 1), origin=(-20.0, 5.0, 0.0))
    image2, _ = sphere_phantom((30, 34, 12), aff2, seed=1)
    return [save_nifti(folder / "case_a.nii.gz", image, aff, np.int16),
            save_nifti(folder / "case_b.nii.gz", image2, aff2, np.int16)]


@pytest.mark.parametrize("network", ["UNet", "SegResNet"])
def test_bundle_imports_and_agrees_with_monai(tmp_path: Path, ct_images: list[Path], network: str) -> None:
    config = copy.deepcopy(SPLEEN_INFERENCE)
    if network == "SegResNet":
        config["network_def"] = dict(SEGRESNET)
    bundle = make_bundle(tmp_path / "spleen_ct_segmentation", config)
    res = runner.invoke(app, ["import", "monai-bundle", str(bundle), "-o", str(tmp_path / "spleen.zip")])
    assert res.exit_code == 0, res.output
    m = read_package(tmp_path / "spleen.zip").manifest
    assert m.architecture.name == network and m.source["kind"] == "monai-bundle" and m.licence == "Apache-2.0"
    assert m.preprocessing.target_spacing_mm == (1.5, 1.5, 2.0)
    assert m.preprocessing.normalisation[0].params["window"] == [-57.0, 164.0]
    assert [lab.name for lab in m.labels] == ["background", "spleen"] and m.folds[0].metrics == {"mean_dice": 0.96}
    assert m.sliding_window.blend == "constant" and m.sliding_window.overlap == 0.5
    res = runner.invoke(app, ["infer", str(tmp_path / "spleen.zip"), *map(str, ct_images), "-o",
                              str(tmp_path / "out"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for image in ct_images:
        ours = np.asarray(nib.load(str(tmp_path / "out" / image.name)).dataobj)
        ref = monai_reference(bundle, image, tmp_path / "monai")
        assert ref.shape == ours.shape
        assert 0 < (ref == 1).sum() < ref.size, "the test network should segment something"
        np.testing.assert_array_equal(ours, ref)


def _refused(tmp_path: Path, config: dict[str, Any]) -> str:
    bundle = make_bundle(tmp_path / "bundle", config)
    with pytest.raises(ConfigError) as err:
        import_monai_bundle(bundle, tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()
    return str(err.value)


def test_expressions_are_refused_naming_the_key(tmp_path: Path) -> None:
    config = copy.deepcopy(SPLEEN_INFERENCE)
    config["preprocessing"]["transforms"][3]["pixdim"] = "$[1.5, 1.5, 2.0]"
    message = _refused(tmp_path, config)
    assert "key 'preprocessing.transforms[3].pixdim'" in message and "evaluated as Python code" in message
    assert "inference.json" in message


def test_references_are_followed_as_data(tmp_path: Path) -> None:
    config = copy.deepcopy(SPLEEN_INFERENCE)
    config["spacing"] = [1.5, 1.5, 2.0]
    config["preprocessing"]["transforms"][3]["pixdim"] = "@spacing"
    bundle = make_bundle(tmp_path / "bundle", config)
    assert import_monai_bundle(bundle, tmp_path / "x.zip").preprocessing.target_spacing_mm == (1.5, 1.5, 2.0)
    config["spacing"] = "$[1.5] * 3"
    assert "key 'preprocessing.transforms[3].pixdim -> @spacing'" in _refused(tmp_path / "b", config)


def test_custom_code_is_refused_naming_the_key(tmp_path: Path) -> None:
    config = copy.deepcopy(SPLEEN_INFERENCE)
    config["preprocessing"]["transforms"].insert(4, {"_target_": "scripts.transforms.MyWindow", "keys": "image"})
    assert "key 'preprocessing.transforms[4]': transform 'scripts.transforms.MyWindow' has no medpipe" in \
        _refused(tmp_path / "a", config)
    config = copy.deepcopy(SPLEEN_INFERENCE)
    config["network_def"]["_target_"] = "scripts.net.MyNet"
    assert "key 'network_def._target_': network 'scripts.net.MyNet'" in _refused(tmp_path / "b", config)
    config = copy.deepcopy(SPLEEN_INFERENCE)
    config["postprocessing"]["transforms"].insert(1, {"_target_": "Lambdad", "keys": "pred", "func": "$lambda x: x"})
    assert "key 'postprocessing.transforms[1].func'" in _refused(tmp_path / "c", config)


def test_swinunetr_builds_from_arguments() -> None:
    """SwinUNETR is built from manifest arguments, and its weights round-trip through safetensors."""
    from medpipe.models.package import load_weights, safetensors_bytes

    args = {"in_channels": 1, "out_channels": 2, "feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}
    torch.manual_seed(0)
    net = build_network("SwinUNETR", args)
    other = build_network("SwinUNETR", args)
    load_weights(other, safetensors_bytes(net), "swin")
    for (k, a), b in zip(net.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
