"""Training: region (sigmoid) outputs and their decoding, deep supervision, folds, exact resume after SIGKILL,
corrupt checkpoints, refused resumes, the persistent cache, and one real BraTS case end to end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from medpipe.config import PipelineConfig, config_from_dict
from medpipe.errors import CheckpointError, DatasetError
from medpipe.labels import label_scores, region_targets
from medpipe.models.factory import build_model
from medpipe.training.run import TrainEvent, train
from medpipe.training.trainer import lr_factor
from tests.conftest import REPO, SHARED_DATA
from tests.datasets.test_layouts import make_layout, write_volume

BRATS_REGIONS = {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}


def tiny(root: Path, fmt: str, **sections: dict[str, Any]) -> PipelineConfig:
    """A config that trains in about a second per epoch on the 12x10x8 test volumes."""
    mr = fmt.startswith("brats")
    raw: dict[str, Any] = {
        "modality": "MR" if mr else "CT",
        "channels": ["t1n", "t1c", "t2w", "t2f"] if mr else ["CT"],
        "labels": {0: "background", 1: "necrosis", 2: "edema", 3: "enhancing"} if mr
        else {0: "background", 1: "kidney", 2: "tumor"},
        "data": {"root": str(root), "format": fmt, "val_fraction": 0.25},
        "transforms": {"spacing_mm": [1.0, 1.0, 2.0], "patch_size_vox": [8, 8, 8], "samples_per_case": 2,
                       "intensity": "zscore_nonzero" if mr else "ct_window", "crop_foreground": False},
        "model": {"arch": "unet3d", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0},
        "training": {"epochs": 2, "iterations_per_epoch": 3, "batch_size": 2, "val_every": 1, "lr": 0.01},
        "inference": {"roi_size_vox": [8, 8, 8], "sw_batch_size": 4, "overlap": 0.25},
    }
    for key, value in sections.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return config_from_dict(raw)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


# ----- regions, decoding, losses ----------------------------------------------------------------------------
def test_label_scores_decode_regions_like_nnunet() -> None:
    cfg = tiny(Path("."), "brats2023", regions=BRATS_REGIONS)
    assert [v for _, _, v in cfg.region_order()] == [2, 1, 3]
    # per voxel region probabilities (WT, TC, ET) and the label nnU-Net's decoding gives
    cases = [((0.1, 0.1, 0.1), 0), ((0.9, 0.1, 0.1), 2), ((0.9, 0.8, 0.1), 1), ((0.9, 0.8, 0.7), 3),
             ((0.9, 0.2, 0.7), 3), ((0.4, 0.8, 0.1), 1), ((0.7, 0.45, 0.0), 2)]
    p = torch.tensor([c[0] for c in cases], dtype=torch.float64).T[:, :, None, None]
    scores = label_scores(torch.logit(p), cfg)
    assert scores.shape == (4, len(cases), 1, 1)
    assert scores.argmax(0).flatten().tolist() == [c[1] for c in cases]
    assert ((scores[0] > 0.5).flatten() == torch.tensor([c[1] == 0 for c in cases])).all()
    legacy = tiny(Path("."), "brats2021", labels={0: "bg", 1: "ncr", 2: "ed", 4: "et"},
                  regions={"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]})
    s = label_scores(torch.logit(p.float()), legacy)
    assert s.shape[0] == 5 and bool((s[3] == -1).all())  # value 3 is never a label
    assert s.argmax(0).flatten().tolist() == [0, 2, 1, 4, 4, 1, 2]


def test_region_targets_overlap() -> None:
    cfg = tiny(Path("."), "brats2023", regions=BRATS_REGIONS)
    lab = torch.tensor([0, 1, 2, 3], dtype=torch.float32).reshape(1, 1, 4, 1, 1)
    t = region_targets(lab, cfg)[0, :, :, 0, 0]
    assert t.tolist() == [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]


def test_regions_that_cannot_be_decoded_are_config_errors() -> None:
    from medpipe.errors import ConfigError

    with pytest.raises(ConfigError, match=r"regions\.TC"):
        tiny(Path("."), "brats2023", regions=[{"name": "TC", "labels": [1, 3]}, {"name": "ET", "labels": [3]},
                                              {"name": "WT", "labels": [1, 2, 3]}])
    with pytest.raises(ConfigError, match=r"regions\.X"):
        tiny(Path("."), "brats2023", regions={"X": [7]})


def test_deep_supervision_loss_reaches_every_decoder_output() -> None:
    from medpipe.training.losses import SegmentationLoss

    cfg = tiny(Path("."), "kits", model={"arch": "dynunet", "channels": [4, 8, 16, 32], "strides": [2, 2, 2],
                                         "deep_supervision": True}, transforms={"patch_size_vox": [16, 16, 16]})
    net = build_model(cfg).train()
    out = net(torch.randn(2, 1, 16, 16, 16))
    assert out.shape[1] == 3  # the full-resolution output + 2 upsampled decoder outputs
    loss = SegmentationLoss(cfg, deep_supervision=True)(list(torch.unbind(out, 1)),
                                                       torch.randint(0, 3, (2, 1, 16, 16, 16)).float())
    loss.backward()
    heads = [m for name, m in net.named_modules() if name.startswith("deep_supervision_heads.")
             and isinstance(m, torch.nn.Conv3d)]
    assert len(heads) == 2 and all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in heads)


def test_lr_schedule_depends_only_on_epoch_and_length() -> None:
    cfg = tiny(Path("."), "kits", training={"epochs": 10, "scheduler": "cosine"})
    assert lr_factor(cfg, 0) == 1.0 and lr_factor(cfg, 10) == pytest.approx(0.01)
    assert lr_factor(cfg, 5) == pytest.approx(0.505)
    poly = cfg.with_overrides(training={"scheduler": "poly"})
    assert lr_factor(poly, 0) == 1.0 and 0 < lr_factor(poly, 9) < 0.2


# ----- training runs ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_layout(tmp_path_factory.mktemp("kits") / "kits", "kits", n=6)


@pytest.fixture(scope="module")
def kits_run(tmp_path_factory: pytest.TempPathFactory, kits: Path) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    train(tiny(kits, "kits"), run, device="cpu")
    return run


def test_region_training_with_folds_and_region_inference(tmp_path: Path) -> None:
    from medpipe.inference.batch import infer

    root = make_layout(tmp_path / "brats", "brats2023", n=6)
    cfg = tiny(root, "brats2023", regions=BRATS_REGIONS, data={"fold": 1, "n_folds": 3},
               model={"arch": "dynunet", "channels": [4, 8, 16], "strides": [2, 2], "deep_supervision": True},
               training={"epochs": 1})
    events: list[TrainEvent] = []
    res = train(cfg, tmp_path / "run", device="cpu", on_event=events.append)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    folds = json.loads((tmp_path / "run" / "splits.json").read_text())["folds"]
    assert split["fold"] == 1 and split["val"] == folds[1]["val"] and len(folds) == 3
    assert set(res.last_dice) == {"WT", "TC", "ET"}
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "val_dice_WT" in header and "data_wait_s" in header and "compute_s" in header
    assert any(e.kind == "start" and "fold 1 of 3" in e.message for e in events)
    case = root / split["val"][0]
    files = sorted(p for p in case.iterdir() if not p.name.endswith("-seg.nii.gz"))
    out = infer(tmp_path / "run", files, tmp_path / "pred", device="cpu")
    assert out.n_failed == 0
    mask = np.asarray(nib.load(str(out.cases[0].mask)).dataobj)
    assert mask.shape == (12, 10, 8) and set(np.unique(mask)) <= {0, 1, 2, 3}


def test_run_folder_and_previous_checkpoint(kits_run: Path) -> None:
    for name in ("best.pt", "last.pt", "previous.pt", "config.yaml", "split.json", "metrics.csv",
                 "training_curve.png"):
        assert (kits_run / name).is_file(), name
    last, prev = (torch.load(kits_run / n, weights_only=True) for n in ("last.pt", "previous.pt"))
    assert (last["epoch"], prev["epoch"]) == (2, 1)
    assert not [p for p in kits_run.iterdir() if p.name.startswith(".")]


def test_corrupt_last_checkpoint_falls_back_then_errors(tmp_path: Path, kits: Path, kits_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(kits_run, run)
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])  # a crash mid-write (or a bad disk)
    events: list[TrainEvent] = []
    res = train(tiny(kits, "kits"), run, device="cpu", resume=True, on_event=events.append)
    notices = " ".join(e.message for e in events if e.kind == "notice")
    assert "last.pt" in notices and "corrupt or truncated" in notices and "previous.pt" in notices
    assert (run / "last.pt.corrupt").is_file() and res.epochs_done == 2
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2  # epoch 2 replayed from epoch 1
    for name in ("last.pt", "previous.pt"):
        (run / name).write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        train(tiny(kits, "kits"), run, device="cpu", resume=True)
    assert "no usable checkpoint" in str(info.value) and "last.pt:" in str(info.value)
    assert "previous.pt:" in str(info.value)


def test_resume_refuses_changed_config_and_changed_data(tmp_path: Path, kits: Path, kits_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(kits_run, run)
    with pytest.raises(CheckpointError, match=r"config differs.*training.lr: 0.01 -> 0.02"):
        train(tiny(kits, "kits", training={"lr": 0.02}), run, device="cpu", epochs=3, resume=True)
    data = tmp_path / "kits"
    shutil.copytree(kits, data)
    img = nib.load(str(data / "case_00000" / "imaging.nii.gz"))
    arr = np.asarray(img.dataobj).copy()
    arr[0, 0, 0] += 5
    write_volume(data / "case_00000" / "imaging.nii.gz", arr, img.affine)
    with pytest.raises(CheckpointError, match="dataset differs"):
        train(tiny(data, "kits"), run, device="cpu", epochs=3, resume=True)


def test_training_refuses_a_dataset_changed_since_the_plan(tmp_path: Path, kits: Path) -> None:
    from medpipe.datasets import data_identity, load_dataset

    identity = data_identity(load_dataset(kits).cases)
    data = tmp_path / "kits"
    shutil.copytree(kits, data)
    assert data_identity(load_dataset(data).cases) == identity  # a moved copy is the same dataset
    seg = nib.load(str(data / "case_00003" / "segmentation.nii.gz"))
    arr = np.asarray(seg.dataobj).copy()
    arr[0, 0, 0] = 1  # one voxel relabelled after planning
    write_volume(data / "case_00003" / "segmentation.nii.gz", arr, seg.affine, np.uint8)
    with pytest.raises(DatasetError, match="changed since it was planned"):
        train(tiny(data, "kits", data={"fingerprint": identity}), tmp_path / "run", device="cpu")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_persistent_cache_is_reused_and_survives_a_truncated_file(tmp_path: Path, kits: Path) -> None:
    cache = tmp_path / "cache"
    cfg = tiny(kits, "kits", training={"epochs": 1, "cache_dir": str(cache)})
    train(cfg, tmp_path / "a", device="cpu")
    files = sorted(cache.rglob("*.pt"))
    assert len(files) == 6  # 4 training + 2 validation cases, preprocessed once
    files[0].write_bytes(files[0].read_bytes()[:100])  # a cache write killed half way
    train(cfg, tmp_path / "b", device="cpu")
    assert torch.load(files[0], weights_only=False) is not None
    for k, v in weights(tmp_path / "a" / "last.pt").items():
        assert torch.equal(v, weights(tmp_path / "b" / "last.pt")[k]), k


def test_tensorboard_events_when_installed(kits_run: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list((kits_run / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(kits_run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("train_loss", "data_wait_s", "compute_s"):  # where each epoch's time went, as in metrics.csv
        assert tag in tags, tags
        assert [e.step for e in acc.Scalars(tag)] == [1, 2]
    assert all(e.value >= 0 for e in acc.Scalars("data_wait_s")) and all(e.value > 0 for e in acc.Scalars("compute_s"))


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_matches_uninterrupted(tmp_path: Path, kits: Path) -> None:
    cfg = tiny(kits, "kits", training={"epochs": 4, "iterations_per_epoch": 4, "val_every": 2})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    train(cfg, tmp_path / "ref", device="cpu")
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "medpipe.cli", "train", str(cfg_path), "--out", str(run),
                             "--device", "cpu"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # a loaded machine can take minutes to import torch and train one epoch
    while not (run / "last.pt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.15)  # somewhere inside epoch 2 (or writing its checkpoint)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(run / "last.pt", weights_only=True)["epoch"] if (run / "last.pt").is_file() else 0
    assert done < 4, "the run finished before it could be killed"
    train(cfg, run, device="cpu", resume=True)
    ref, resumed = weights(tmp_path / "ref" / "last.pt"), weights(run / "last.pt")
    for k in ref:
        assert torch.allclose(ref[k], resumed[k], atol=1e-6), k
    rows = [r.split(",")[0] for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert rows == ["1", "2", "3", "4"]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP needs CUDA")
def test_amp_training_on_cuda(tmp_path: Path, kits: Path) -> None:
    for dtype in ("bf16", "fp16"):
        res = train(tiny(kits, "kits", training={"epochs": 1, "amp_dtype": dtype}), tmp_path / dtype,
                    device="cuda")
        assert np.isfinite(res.best_dice)


@pytest.mark.slow
@pytest.mark.realdata
def test_real_brats_case_trains_one_epoch_end_to_end(tmp_path: Path) -> None:
    """A BraTS-2021-layout dataset made of copies of the real TCGA-DU-7294 case (four modalities, five
    algorithms' segmentations as labels), region training, one short epoch, then inference on a copy."""
    src = SHARED_DATA / "nifti" / "brats-tcga-du-7294"
    if not src.is_dir():
        pytest.skip("shared real data not present")
    from medpipe.inference.batch import infer

    modalities = {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "fla"}
    segs = sorted((src / "segmentation").glob("*.nii.gz"))[:3]
    root = tmp_path / "brats21"
    for i, seg in enumerate(segs):
        cid = f"BraTS2021_{i:05d}"
        (root / cid).mkdir(parents=True)
        for name, short in modalities.items():
            (root / cid / f"{cid}_{name}.nii.gz").symlink_to(src / "raw_bet" / f"TCGA-DU-7294_{short}_bet.nii.gz")
        (root / cid / f"{cid}_seg.nii.gz").symlink_to(seg)
    cfg = config_from_dict({
        "modality": "MR", "channels": ["t1", "t1ce", "t2", "flair"],
        "labels": {0: "background", 1: "necrosis", 2: "edema", 4: "enhancing"},
        "regions": {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]},
        "data": {"root": str(root), "format": "auto", "val_fraction": 0.34},
        "transforms": {"spacing_mm": [4.0, 4.0, 4.0], "intensity": "zscore_nonzero", "patch_size_vox": [32, 32, 32],
                       "samples_per_case": 2},
        "model": {"arch": "dynunet", "channels": [8, 16, 32], "strides": [2, 2], "deep_supervision": True},
        "training": {"epochs": 1, "iterations_per_epoch": 2, "batch_size": 1, "val_every": 1},
        "inference": {"roi_size_vox": [32, 32, 32], "sw_batch_size": 4, "overlap": 0.25},
    })
    res = train(cfg, tmp_path / "run", device="cpu")
    assert set(res.last_dice) == {"WT", "TC", "ET"} and all(0.0 <= v <= 1.0 for v in res.last_dice.values())
    case = root / json.loads((tmp_path / "run" / "split.json").read_text())["val"][0]
    files = sorted(p for p in case.iterdir() if not p.name.endswith("_seg.nii.gz"))
    out = infer(tmp_path / "run", files, tmp_path / "pred", device="cpu")
    assert out.n_failed == 0, out.cases[0].error
    mask = nib.load(str(out.cases[0].mask))
    assert mask.shape == (240, 240, 155) and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2, 4}
