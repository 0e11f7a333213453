"""BAD-INPUTS cases on the training side, each built from scratch: N7 (NaN/Inf refused before training; a loss
that becomes non-finite stops the run), L2 + S6 (empty labels and spacing outliers surfaced), M7 (which device
and why), R3 (tiny /dev/shm), R4 (a checkpoint write that fails keeps every good checkpoint), M2
(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is an environment error, no file is quarantined), S8 (a refused resume says
what changed)."""

from __future__ import annotations

import json
import resource
import shutil
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medpipe.errors import CheckpointError, DatasetError, OutputError, TrainingError
from medpipe.training.data import shm_plan
from medpipe.training.run import TrainEvent, train
from tests.conftest import make_affine
from tests.datasets.test_layouts import make_layout, write_volume
from tests.training.test_train import tiny


def _epoch(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["epoch"])


@pytest.fixture(scope="module")
def odd_kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six KiTS-style cases; case_00002's label is empty, case_00005 has 6 mm slices among 2 mm ones."""
    root = make_layout(tmp_path_factory.mktemp("odd") / "kits", "kits", n=6)
    seg = root / "case_00002" / "segmentation.nii.gz"
    write_volume(seg, np.zeros((12, 10, 8), np.uint8), nib.load(seg).affine, dtype=np.uint8)
    for name in ("imaging.nii.gz", "segmentation.nii.gz"):
        path = root / "case_00005" / name
        img = nib.load(path)
        write_volume(path, np.asanyarray(img.dataobj), make_affine(spacing=(1.0, 1.0, 6.0)),
                     dtype=img.get_data_dtype().type)
    return root


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory: pytest.TempPathFactory, odd_kits: Path) -> tuple[Path, list[TrainEvent]]:
    run = tmp_path_factory.mktemp("runs") / "run"
    events: list[TrainEvent] = []
    train(tiny(odd_kits, "kits", training={"epochs": 1}), run, device="cpu", on_event=events.append)
    return run, events


def test_nan_and_inf_voxels_are_refused_before_training_naming_case_and_file(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "kits", "kits", n=4)
    path = root / "case_00003" / "imaging.nii.gz"
    img = nib.load(path)
    arr = np.asanyarray(img.dataobj).astype(np.float32)
    arr[0, 0, 0], arr[1, 1, 1] = np.nan, np.inf
    write_volume(path, arr, img.affine)
    with pytest.raises(DatasetError) as exc:
        train(tiny(root, "kits"), tmp_path / "run", device="cpu")
    msg = str(exc.value)
    assert "case case_00003" in msg and str(path) in msg and "1 NaN and 1 Inf voxels" in msg
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.slow
def test_warnings_devices_and_empty_labels_are_surfaced(one_epoch: tuple[Path, list[TrainEvent]]) -> None:
    run, events = one_epoch
    notices = [e.message for e in events if e.kind == "notice"]
    assert any("case case_00002" in n and "label has no foreground" in n for n in notices), notices
    assert any("case case_00005" in n and "far from the dataset median" in n for n in notices), notices
    assert "running on cpu: requested with --device cpu" in notices
    split = (run / "split.json").read_text()
    assert "label has no foreground" in split and "case_identity" in split


@pytest.mark.slow
def test_every_phase_reports_progress_per_unit(one_epoch: tuple[Path, list[TrainEvent]]) -> None:
    """Issue 15: dataset check (per case), caching (per case), the epoch (per iteration) and validation (per case)
    each report ``step`` of ``steps``, counting up to the end, so the CLI can show a bar and an estimate."""
    run, events = one_epoch
    kinds = [e.kind for e in events]
    for kind, total in (("check", 6), ("cache", None), ("step", 3), ("val_case", None)):
        seen = [(e.step, e.steps) for e in events if e.kind == kind]
        assert seen, f"no {kind!r} progress in {sorted(set(kinds))}"
        steps = {n for _, n in seen}
        assert len(steps) == 1 and (total is None or steps == {total}), (kind, seen)
        assert [i for i, _ in seen] == list(range(1, seen[0][1] + 1)), (kind, seen)  # 1, 2, ... steps
    assert any(e.kind == "phase" and "caching" in e.message for e in events)
    assert kinds.index("check") < kinds.index("cache") < kinds.index("step") < kinds.index("val_case")
    n_val = len(json.loads((run / "split.json").read_text())["val"])
    assert {e.steps for e in events if e.kind == "val_case"} == {n_val}


def test_shm_plan_falls_back_to_the_main_process_when_dev_shm_is_small() -> None:
    assert shm_plan(0, 10**9, 10**6) is None  # no workers, no shared memory needed
    assert shm_plan(2, 128 * 2**20, 2**30) is None
    note = shm_plan(2, 128 * 2**20, 64 * 2**20)
    assert note is not None and "64 MiB free" in note and "128 MiB" in note and "--shm-size" in note


def test_a_small_dev_shm_makes_the_loader_run_in_the_main_process_and_say_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medpipe.datasets import load_dataset
    from medpipe.training import data as data_module
    from medpipe.training.distributed import DistInfo

    root = make_layout(tmp_path / "kits", "kits", n=3)
    cfg = tiny(root, "kits", training={"num_workers": 2})
    cases = list(load_dataset(root, "kits").cases)
    plain: list[str] = []
    if data_module.shm_plan(2, data_module.shm_need_bytes(cfg), data_module.shm_free_bytes()) is None:
        assert data_module.build_loaders(cfg, cases[:2], cases[2:], "id", DistInfo(), "cpu",
                                         plain).loader.num_workers == 2  # room enough: workers as asked
    # Docker's default: 64 MiB of /dev/shm (the free space read from the file system is what changes)
    monkeypatch.setattr(data_module, "shm_free_bytes", lambda folder=None: 64 * 2**20)
    notices: list[str] = []
    loaders = data_module.build_loaders(cfg, cases[:2], cases[2:], "id", DistInfo(), "cpu", notices)
    assert loaders.loader.num_workers == 0
    (note,) = notices
    assert "/dev/shm has 64 MiB free" in note and "--shm-size" in note and "training.num_workers" in note
    assert next(iter(loaders.loader))  # and the main-process loader delivers a batch


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE / SIGXFSZ")
def test_a_checkpoint_write_that_fails_keeps_the_good_ones(tmp_path: Path, odd_kits: Path,
                                                           one_epoch: tuple[Path, list[TrainEvent]]) -> None:
    run = tmp_path / "run"
    shutil.copytree(one_epoch[0], run)
    before = (run / "last.pt").read_bytes()
    limit = len(before) // 2  # a real write failure: the file-size limit (EFBIG), as on a full disk
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        with pytest.raises(OutputError) as exc:
            train(tiny(odd_kits, "kits", training={"epochs": 1}), run, device="cpu", epochs=2, resume=True)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    msg = str(exc.value)
    assert "checkpoint of epoch 2 not written" in msg and "errno 27 EFBIG" in msg
    assert "kept intact: best.pt, last.pt" in msg and str(run) in msg
    assert (run / "last.pt").read_bytes() == before and _epoch(run / "last.pt") == 1
    assert not [p.name for p in run.iterdir() if p.name.startswith(".") or p.name == "next.pt"]


@pytest.mark.slow
def test_force_no_weights_only_is_an_environment_error_not_a_corrupt_file(
        tmp_path: Path, odd_kits: Path, one_epoch: tuple[Path, list[TrainEvent]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(one_epoch[0], run)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set in the environment"):
        train(tiny(odd_kits, "kits", training={"epochs": 1}), run, device="cpu", epochs=2, resume=True)
    assert (run / "last.pt").is_file() and not list(run.glob("*.corrupt"))


@pytest.mark.slow
def test_a_refused_resume_says_what_changed(tmp_path: Path, odd_kits: Path,
                                           one_epoch: tuple[Path, list[TrainEvent]]) -> None:
    run, data = tmp_path / "run", tmp_path / "kits"
    shutil.copytree(one_epoch[0], run)
    shutil.copytree(odd_kits, data)
    for case in ("case_00000", "case_00001", "case_00002", "case_00003", "case_00004"):
        shutil.rmtree(data / case)
    with pytest.raises(DatasetError) as exc:
        train(tiny(data, "kits", training={"epochs": 1}), run, device="cpu", epochs=2, resume=True)
    msg = str(exc.value)
    assert "need at least 2 labelled cases" in msg
    assert "since the run began: cases gone: case_00000, case_00001, case_00002, case_00003, case_00004" in msg


@pytest.mark.slow
def test_a_loss_that_becomes_non_finite_stops_the_run_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, odd_kits: Path, one_epoch: tuple[Path, list[TrainEvent]]) -> None:
    run = tmp_path / "run"
    shutil.copytree(one_epoch[0], run)
    ckpt = torch.load(run / "last.pt", weights_only=True)  # a diverging run: epoch 2 steps with lr 1e38
    for group in ckpt["optimizer"]["param_groups"]:
        group["lr"] = group["initial_lr"] = 1e38
    ckpt["scheduler"]["base_lrs"] = [1e38] * len(ckpt["scheduler"]["base_lrs"])
    torch.save(ckpt, run / "last.pt")
    with pytest.raises(TrainingError) as exc:
        train(tiny(odd_kits, "kits", training={"epochs": 1}), run, device="cpu", epochs=3, resume=True)
    msg = str(exc.value)
    assert "training loss became" in msg and "in epoch 2" in msg and "epoch 1) is the last good checkpoint" in msg
    assert _epoch(run / "last.pt") == 1
