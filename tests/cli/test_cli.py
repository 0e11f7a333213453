"""The CLI end to end on tiny data: train -> infer -> evaluate, resume, and every bad input of the spine issue
(one-line error naming the file, exit code 1, no traceback, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from medpipe.cli import app
from tests.conftest import REPO, make_affine, save_nifti

runner = CliRunner()

TINY = {
    "training": {"epochs": 2, "iterations_per_epoch": 3, "val_every": 1, "batch_size": 1, "cache": True},
    "model": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0},
    "transforms": {"patch_size_vox": [32, 32, 16], "samples_per_case": 2},
    "inference": {"roi_size_vox": [32, 32, 16], "sw_batch_size": 2, "overlap": 0.25},
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def tiny_config(tmp: Path, data: Path, **extra: dict) -> Path:
    cfg = yaml.safe_load((REPO / "pipelines" / "sample-ct.yaml").read_text())
    cfg = _merge(_merge(cfg, TINY), extra)
    cfg["data"]["root"] = str(data)
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five KiTS-style cases copied from the shipped sample data."""
    root = tmp_path_factory.mktemp("kits")
    for case in sorted((REPO / "sample_data" / "kits").iterdir())[:5]:
        shutil.copytree(case, root / case.name)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, kits: Path) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    res = runner.invoke(app, ["train", str(tiny_config(tmp, kits)), "--out", str(tmp / "run"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return tmp / "run"


def _assert_clean_error(res, *fragments: str) -> None:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    text = " ".join(res.output.split())
    for frag in fragments:
        assert frag in text, f"{frag!r} not in {text!r}"


def test_train_writes_run_folder(trained: Path) -> None:
    for name in ("best.pt", "last.pt", "config.yaml", "split.json", "metrics.csv", "training_curve.png"):
        assert (trained / name).is_file(), name
    rows = (trained / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss") and len(rows) == 3
    assert "val_dice_kidney" in rows[0]
    assert not [p for p in trained.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_infer_and_evaluate_through_cli(trained: Path, kits: Path, tmp_path: Path) -> None:
    val = json.loads((trained / "split.json").read_text())["val"]
    inputs = [str(kits / c / "imaging.nii.gz") for c in val]
    res = runner.invoke(app, ["infer", str(trained), *inputs, "-o", str(tmp_path / "pred"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for c in val:
        mask = nib.load(str(tmp_path / "pred" / f"{c}.nii.gz"))
        src = nib.load(str(kits / c / "imaging.nii.gz"))
        assert mask.shape == src.shape and np.allclose(mask.affine, src.affine, atol=1e-4)
        assert mask.get_data_dtype() == np.uint8
        side = json.loads((tmp_path / "pred" / f"{c}.json").read_text())
        assert side["input_sha256"] and side["config_hash"] and side["versions"]["monai"]
        assert set(side["timings_s"]) == {"preprocess", "inference", "export"}
    # a second run skips finished cases (resumable batches)
    again = runner.invoke(app, ["infer", str(trained), *inputs, "-o", str(tmp_path / "pred"), "--device", "cpu"])
    assert again.exit_code == 0 and "skipped" in again.output
    refs = tmp_path / "refs"
    refs.mkdir()
    for c in val:
        shutil.copy(kits / c / "segmentation.nii.gz", refs / f"{c}.nii.gz")
    res = runner.invoke(app, ["evaluate", str(tmp_path / "pred"), str(refs), "-o", str(tmp_path / "report")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "report" / "metrics.csv").is_file() and (tmp_path / "report" / "summary.json").is_file()


def test_resume_continues_and_refuses_changed_config(tmp_path: Path, kits: Path) -> None:
    cfg = tiny_config(tmp_path, kits)
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", str(cfg), "--out", str(out), "--epochs", "1", "--device", "cpu"]).exit_code == 0
    res = runner.invoke(app, ["train", str(cfg), "--out", str(out), "--epochs", "2", "--resume", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    changed = tiny_config(tmp_path, kits, training={"lr": 0.5})
    res = runner.invoke(app, ["train", str(changed), "--out", str(out), "--epochs", "3", "--resume"])
    _assert_clean_error(res, "config differs")
    res = runner.invoke(app, ["train", str(cfg), "--out", str(out)])
    _assert_clean_error(res, "already holds a training run", "--resume")


def test_forced_resume_after_an_optimizer_change_starts_its_state_fresh(tmp_path: Path, kits: Path) -> None:
    """--force resumes the weights; an optimizer or scheduler of another kind cannot take the old state, so it
    starts fresh with a notice (it was a KeyError traceback)."""
    out = tmp_path / "run"
    cfg = tiny_config(tmp_path, kits)
    assert runner.invoke(app, ["train", str(cfg), "--out", str(out), "--epochs", "1", "--device", "cpu"]).exit_code == 0
    changed = tiny_config(tmp_path, kits, training={"optimizer": "sgd", "scheduler": "poly"})
    res = runner.invoke(app, ["train", str(changed), "--out", str(out), "--epochs", "2", "--resume", "--force",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "optimizer" in res.output and "fresh" in res.output
    assert len((out / "metrics.csv").read_text().splitlines()) == 3


def test_exact_resume_matches_uninterrupted_training(tmp_path: Path, kits: Path) -> None:
    import torch

    cfg = tiny_config(tmp_path, kits, training={"val_every": 5, "scheduler": "none"})
    a, b = tmp_path / "a", tmp_path / "b"
    assert runner.invoke(app, ["train", str(cfg), "--out", str(a), "--epochs", "2", "--device", "cpu"]).exit_code == 0
    assert runner.invoke(app, ["train", str(cfg), "--out", str(b), "--epochs", "1", "--device", "cpu"]).exit_code == 0
    assert runner.invoke(app, ["train", str(cfg), "--out", str(b), "--epochs", "2", "--resume",
                               "--device", "cpu"]).exit_code == 0
    wa = torch.load(a / "last.pt", weights_only=True)["state_dict"]
    wb = torch.load(b / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


# ----- bad inputs -------------------------------------------------------------------------------------------
def _image(path: Path, data: np.ndarray, spacing: tuple = (1.0, 1.0, 2.0)) -> Path:
    return save_nifti(path, data, make_affine(spacing=spacing))


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: d / "missing.nii.gz", "input not found"),
        (lambda d: _bytes(d / "junk.nii", b"this is not an image at all" * 20), "not a readable NIfTI"),
        (lambda d: _image(d / "flat.nii.gz", np.zeros((16, 16), np.float32)), "2D image"),
        (lambda d: _image(d / "five.nii.gz", np.zeros((8, 8, 8, 1, 2), np.float32)), "5D image"),
        (lambda d: _image(d / "nan.nii.gz", _with_nan(np.zeros((16, 16, 8), np.float32))), "1 NaN and 0 Inf"),
        (lambda d: _zero_spacing(d / "zero.nii"), "zero or negative voxel spacing"),
    ],
)
def test_infer_bad_inputs(trained: Path, tmp_path: Path, make, fragment: str) -> None:
    bad = make(tmp_path)
    out = tmp_path / "out"
    res = runner.invoke(app, ["infer", str(trained), str(bad), "-o", str(out), "--device", "cpu"])
    _assert_clean_error(res, fragment, bad.name)
    assert not out.exists() or not any(out.iterdir())


def test_infer_run_without_checkpoint_and_unwritable_output(trained: Path, tmp_path: Path, kits: Path) -> None:
    img = str(kits / "case_00000" / "imaging.nii.gz")
    (tmp_path / "empty_run").mkdir()
    res = runner.invoke(app, ["infer", str(tmp_path / "empty_run"), img, "-o", str(tmp_path / "o")])
    _assert_clean_error(res, "no checkpoint", "empty_run")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = runner.invoke(app, ["infer", str(trained), img, "-o", str(blocker / "out")])
    _assert_clean_error(res, "cannot create output folder", "file/out")


def test_debug_shows_traceback(trained: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["--debug", "infer", str(trained), str(tmp_path / "nope.nii.gz"), "-o", str(tmp_path)])
    assert res.exit_code != 0 and res.exception is not None


def test_train_bad_config_and_bad_cases(tmp_path: Path, kits: Path) -> None:
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("training:\n  epochz: 3\n")
    _assert_clean_error(runner.invoke(app, ["train", str(bad_cfg), "--out", str(tmp_path / "r")]),
                        "bad.yaml", "unknown key 'training.epochz'")
    # a label value outside the label map
    data = tmp_path / "ds"
    shutil.copytree(kits, data)
    seg_path = data / "case_00001" / "segmentation.nii.gz"
    seg = nib.load(str(seg_path))
    arr = np.asarray(seg.dataobj).copy()
    arr[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(arr, seg.affine, seg.header), str(seg_path))
    res = runner.invoke(app, ["train", str(tiny_config(tmp_path, data)), "--out", str(tmp_path / "r1")])
    _assert_clean_error(res, "segmentation.nii.gz", "label values [7]")
    # a label on another grid
    moved = seg.affine.copy()
    moved[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(seg.dataobj), moved, seg.header), str(seg_path))
    res = runner.invoke(app, ["train", str(tiny_config(tmp_path, data)), "--out", str(tmp_path / "r2")])
    _assert_clean_error(res, "case_00001", "label grid disagrees")


def test_evaluate_grid_mismatch(tmp_path: Path) -> None:
    a = _image(tmp_path / "p" / "c1.nii.gz", np.ones((8, 8, 4), np.uint8)) if (tmp_path / "p").mkdir() is None else None
    (tmp_path / "r").mkdir()
    _image(tmp_path / "r" / "c1.nii.gz", np.ones((8, 8, 4), np.uint8), spacing=(1.0, 1.0, 3.0))
    res = runner.invoke(app, ["evaluate", str(tmp_path / "p"), str(tmp_path / "r"), "-o", str(tmp_path / "rep")])
    _assert_clean_error(res, "c1.nii.gz")
    assert a is not None


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _with_nan(a: np.ndarray) -> np.ndarray:
    a[1, 2, 3] = np.nan
    return a


def _zero_spacing(path: Path) -> Path:
    import struct

    save_nifti(path, np.zeros((8, 8, 8), np.int16), np.eye(4))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<f", raw, 84, 0.0)
    path.write_bytes(bytes(raw))
    return path


def test_one_bad_case_in_a_batch_does_not_stop_the_others(trained: Path, kits: Path, tmp_path: Path) -> None:
    folder = tmp_path / "batch"
    folder.mkdir()
    shutil.copy(kits / "case_00000" / "imaging.nii.gz", folder / "good_a.nii.gz")
    shutil.copy(kits / "case_00002" / "imaging.nii.gz", folder / "good_b.nii.gz")
    _image(folder / "broken.nii.gz", _with_nan(np.zeros((16, 16, 8), np.float32)))
    out = tmp_path / "out"
    res = runner.invoke(app, ["infer", str(trained), str(folder), "-o", str(out), "--device", "cpu"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    text = " ".join(res.output.split())
    assert "broken" in text and "failed" in text and "NaN" in text
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["good_a.nii.gz", "good_b.nii.gz"]
    assert not (out / "broken.json").exists()


@pytest.mark.parametrize(
    ("transform", "fragment"),
    [
        (lambda hu: (hu - hu.min()) / (hu.max() - hu.min()), "span less than 20 units"),  # min-max normalised
        (lambda hu: hu + 1024.0, "nothing is at or below"),  # stored values, rescale intercept lost
        (lambda hu: np.round(255 * (hu - hu.min()) / (hu.max() - hu.min())), "0..255"),  # uint8 display range
    ],
)
def test_ct_model_refuses_inputs_that_are_not_hu(trained: Path, kits: Path, tmp_path: Path, transform,
                                                 fragment: str) -> None:
    src = nib.load(str(kits / "case_00000" / "imaging.nii.gz"))
    bad = _image(tmp_path / "not_hu.nii.gz", np.zeros((2, 2, 2), np.float32))
    save_nifti(bad, transform(np.asarray(src.dataobj, dtype=np.float32)).astype(np.float32), src.affine)
    out = tmp_path / "out"
    res = runner.invoke(app, ["infer", str(trained), str(bad), "-o", str(out), "--device", "cpu"])
    _assert_clean_error(res, "not_hu.nii.gz", "does not look like CT in Hounsfield units", fragment,
                        "--allow-non-hu")
    res = runner.invoke(app, ["infer", str(trained), str(bad), "-o", str(out), "--device", "cpu", "--allow-non-hu"])
    assert res.exit_code == 0, res.output
    side = json.loads((out / "not_hu.json").read_text())
    assert side["intensity_check"]["looks_like_hu"] is False
