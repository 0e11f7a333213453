"""Packages: a package infers the same masks as its run folder; tampered packages are refused naming the file;
ONNX Runtime masks match PyTorch's; the model card."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medpipe.cli import app
from medpipe.config import config_from_dict
from medpipe.errors import CheckpointError
from medpipe.models.checkpoint import save_checkpoint
from medpipe.models.factory import build_model
from medpipe.models.manifest import Manifest, manifest_schema
from medpipe.models.package import read_package
from medpipe.models.packaging import build_package
from tests.conftest import make_affine, save_nifti, sphere_phantom

runner = CliRunner()


def tiny_run(folder: Path, arch: str = "unet3d", seed: int = 0, fold: int = -1) -> Path:
    """A run folder with an untrained tiny CT model whose last layer is biased so the masks are not empty."""
    cfg = config_from_dict({
        "name": "tiny-ct", "labels": {0: "background", 1: "organ", 2: "core"},
        "data": {"fold": fold},
        "transforms": {"spacing_mm": [1.5, 1.5, 2.5], "crop_foreground": False, "patch_size_vox": [32, 32, 16]},
        "model": {"arch": arch, "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0},
        "inference": {"roi_size_vox": [32, 32, 16], "sw_batch_size": 2, "overlap": 0.25},
    })
    torch.manual_seed(seed)
    net = build_model(cfg)
    folder.mkdir(parents=True)
    save_checkpoint(folder / "best.pt", net, cfg, epoch=4, best_epoch=4, best_dice=0.42)
    (folder / "metrics.csv").write_text("epoch,train_loss,val_dice_organ,val_dice_core,val_dice_mean\n"
                                        "2,0.9,,,\n4,0.8,0.5,0.34,0.42\n")
    (folder / "split.json").write_text(json.dumps({"fold": fold, "train": ["a", "b", "c"], "val": ["d"]}))
    return folder


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    aff = make_affine((2, 0, 1), (-1, 1, -1), (0.9, 1.3, 2.5), (8, -5, 12), (12.0, -40.0, 30.0))
    image, _ = sphere_phantom((40, 36, 16), aff)
    save_nifti(folder / "case_a.nii.gz", image, aff, np.int16)
    aff2 = make_affine(spacing=(1.2, 1.2, 3.0), origin=(-20.0, 5.0, 0.0))
    image2, _ = sphere_phantom((30, 34, 12), aff2, seed=1)
    save_nifti(folder / "case_b.nii.gz", image2, aff2, np.int16)
    return folder


@pytest.fixture(scope="module")
def run_and_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pkg")
    run = tiny_run(root / "run")
    res = runner.invoke(app, ["package", str(run), "-o", str(root / "tiny.zip"), "--onnx", "--licence", "CC-BY-4.0"])
    assert res.exit_code == 0, res.output
    return run, root / "tiny.zip"


def _infer(model: Path, scans: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    res = runner.invoke(app, ["infer", str(model), str(scans), "-o", str(out), "--device", "cpu", *extra])
    assert res.exit_code == 0, res.output
    return {p.name: np.asarray(nib.load(str(p)).dataobj) for p in sorted(out.glob("*.nii.gz"))}


def test_package_infers_the_same_masks_as_its_run_folder(run_and_package: tuple[Path, Path], scans: Path,
                                                         tmp_path: Path) -> None:
    run, pkg = run_and_package
    from_run = _infer(run, scans, tmp_path / "run")
    from_zip = _infer(pkg, scans, tmp_path / "zip")
    assert list(from_run) == ["case_a.nii.gz", "case_b.nii.gz"] == list(from_zip)
    for name in from_run:
        assert len(np.unique(from_run[name])) > 1, "the test model should not give a constant mask"
        np.testing.assert_array_equal(from_zip[name], from_run[name])
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(pkg) as zf:
        zf.extractall(unpacked)
    from_dir = _infer(unpacked, scans, tmp_path / "dir")
    for name in from_run:
        np.testing.assert_array_equal(from_dir[name], from_run[name])
    side = json.loads((tmp_path / "zip" / "case_a.json").read_text())
    assert side["model"]["checkpoint"] == "tiny.zip" and side["engine"] == "torch"


def test_manifest_content(run_and_package: tuple[Path, Path]) -> None:
    contents = read_package(run_and_package[1])
    m = contents.manifest
    assert m.format == "medpipe-package/1" and m.name == "tiny-ct" and m.licence == "CC-BY-4.0"
    assert m.architecture.name == "UNet" and m.architecture.args["channels"] == [4, 8, 16]
    assert [c.name for c in m.channels] == ["CT"] and m.channels[0].modality == "CT"
    assert m.preprocessing.kind == "medpipe" and m.preprocessing.target_spacing_mm == (1.5, 1.5, 2.5)
    assert m.preprocessing.normalisation[0].params["window"] == [-200.0, 300.0]
    assert m.sliding_window.patch_size_vox == (32, 32, 16) and m.output.activation == "softmax"
    assert [(lab.value, lab.name) for lab in m.labels] == [(0, "background"), (1, "organ"), (2, "core")]
    assert m.folds[0].metrics == {"best_val_dice_mean": 0.42, "best_epoch": 4, "val_dice_organ": 0.5,
                                  "val_dice_core": 0.34, "val_dice_mean": 0.42}
    assert m.training["folds"][0]["n_train"] == 3
    assert {f.path for f in m.files} == {"weights/fold_0.safetensors", "onnx/fold_0.onnx"}
    assert "root" not in m.preprocessing.config["data"]  # no local paths in a package
    # the stored JSON round-trips and validates
    assert Manifest.from_json(m.to_json()) == m
    assert manifest_schema()["properties"]["format"]["const"] == m.format


@pytest.mark.slow
def test_dynunet_package_with_two_folds(tmp_path: Path, scans: Path) -> None:
    tiny_run(tmp_path / "cv" / "fold_0", "dynunet", seed=0, fold=0)
    tiny_run(tmp_path / "cv" / "fold_1", "dynunet", seed=1, fold=1)
    result = build_package([tmp_path / "cv"], tmp_path / "cv.zip")
    assert [f.fold for f in result.manifest.folds] == [0, 1]
    assert result.manifest.architecture.name == "DynUNet"
    masks = _infer(tmp_path / "cv.zip", scans, tmp_path / "out")
    assert len(masks) == 2


def _rewrite_zip(src: Path, dest: Path, change: dict[str, bytes | None]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        names = zin.namelist()
        for name in names:
            data = change.get(name, zin.read(name)) if name in change else zin.read(name)
            if data is not None:
                zout.writestr(name, data)
        for name, data in change.items():
            if name not in names and data is not None:
                zout.writestr(name, data)
    return dest


def _flip_byte(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]


def test_tampered_packages_are_refused(run_and_package: tuple[Path, Path], tmp_path: Path) -> None:
    pkg = run_and_package[1]
    with zipfile.ZipFile(pkg) as zf:
        weights = zf.read("weights/fold_0.safetensors")
        manifest = json.loads(zf.read("medpipe.json"))
    cases = {
        "changed": ({"weights/fold_0.safetensors": _flip_byte(weights)}, "sha256 mismatch for 'weights/fold_0"),
        "missing": ({"onnx/fold_0.onnx": None}, "'onnx/fold_0.onnx' listed in the manifest is missing"),
        "pickle": ({"weights/extra.pkl": b"\x80\x04K\x01."}, "file 'weights/extra.pkl' is not listed"),
        "version": ({"medpipe.json": json.dumps({**manifest, "format": "medpipe-package/99"}).encode()},
                    "unknown manifest format 'medpipe-package/99'"),
        "schema": ({"medpipe.json": json.dumps({**manifest, "output": {"activation": "relu"}}).encode()},
                   "violates the schema at 'output.activation'"),
        "escape": ({"../evil.txt": b"x"}, "unsafe member name"),
    }
    for label, (change, message) in cases.items():
        bad = _rewrite_zip(pkg, tmp_path / f"{label}.zip", change)
        with pytest.raises(CheckpointError) as err:
            read_package(bad)
        assert message in str(err.value) and str(bad) in str(err.value), label
    res = runner.invoke(app, ["info", str(tmp_path / "changed.zip")])
    assert res.exit_code == 1 and "sha256 mismatch" in res.output and "Traceback" not in res.output


def test_extra_file_in_unpacked_package_is_refused(run_and_package: tuple[Path, Path], tmp_path: Path) -> None:
    with zipfile.ZipFile(run_and_package[1]) as zf:
        zf.extractall(tmp_path / "pkg")
    read_package(tmp_path / "pkg")
    (tmp_path / "pkg" / "weights" / "fold_0.pt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match=r"'weights/fold_0.pt' is not listed"):
        read_package(tmp_path / "pkg")


def test_onnxruntime_masks_match_pytorch(run_and_package: tuple[Path, Path], scans: Path, tmp_path: Path) -> None:
    pkg = run_and_package[1]
    torch_masks = _infer(pkg, scans, tmp_path / "torch", "--engine", "torch")
    ort_masks = _infer(pkg, scans, tmp_path / "ort", "--engine", "onnxruntime")
    for name, ref in torch_masks.items():
        got = ort_masks[name]
        for label in (1, 2):
            a, b = ref == label, got == label
            dice = 2 * (a & b).sum() / max(1, a.sum() + b.sum())
            assert dice >= 0.999 or not (a.any() or b.any()), (name, label, dice)
    side = json.loads((tmp_path / "ort" / "case_a.json").read_text())
    assert side["engine"] == "onnxruntime"


def test_onnxruntime_engine_needs_onnx_files(tmp_path: Path, scans: Path) -> None:
    run = tiny_run(tmp_path / "run")
    build_package([run], tmp_path / "plain.zip")
    res = runner.invoke(app, ["infer", str(tmp_path / "plain.zip"), str(scans), "-o", str(tmp_path / "o"),
                              "--engine", "onnxruntime", "--device", "cpu"])
    assert res.exit_code == 1 and "has no ONNX file" in res.output
    res = runner.invoke(app, ["infer", str(run), str(scans), "-o", str(tmp_path / "o"), "--engine", "onnxruntime"])
    assert res.exit_code == 1 and "needs a package with ONNX files" in res.output


def test_model_card(run_and_package: tuple[Path, Path]) -> None:
    res = runner.invoke(app, ["info", str(run_and_package[1])])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for needle in ("tiny-ct", "UNet", "0: CT (CT)", "1.5 x 1.5 x 2.5 mm", "organ", "CC-BY-4.0", "best_val_dice_mean"):
        assert needle in text, needle
    res = runner.invoke(app, ["info", str(run_and_package[1]), "--json"])
    assert json.loads(res.output)["manifest"]["name"] == "tiny-ct"


def test_folds_of_different_models_are_refused(tmp_path: Path) -> None:
    tiny_run(tmp_path / "cv" / "fold_0", "unet3d", fold=0)
    tiny_run(tmp_path / "cv" / "fold_1", "dynunet", fold=1)
    with pytest.raises(CheckpointError, match="fold 1 was trained with another model or preprocessing than fold 0"):
        build_package([tmp_path / "cv"], tmp_path / "cv.zip")
    assert not (tmp_path / "cv.zip").exists()
    res = runner.invoke(app, ["package", str(tmp_path / "cv" / "fold_0"), str(tmp_path / "cv" / "fold_0"),
                              "-o", str(tmp_path / "twice.zip")])
    assert res.exit_code == 1 and "same fold number" in res.output
