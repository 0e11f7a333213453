"""DDP through torchrun on CPU (gloo, two processes): the same command line as a single-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from medpipe.training.distributed import DistInfo, gather_objects, init_distributed, mean_across_ranks
from tests.conftest import REPO
from tests.datasets.test_layouts import make_layout
from tests.training.test_train import tiny


def test_single_process_is_rank_zero_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info, device = init_distributed("cpu")
    assert info == DistInfo() and info.is_main and not info.enabled and device == "cpu"
    assert mean_across_ranks(2.5, info, "cpu") == 2.5 and gather_objects({"a": 1}, info) == [{"a": 1}]


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "kits", "kits", n=6)
    cfg = tiny(root, "kits", training={"epochs": 2, "iterations_per_epoch": 2})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "medpipe.cli", "train", str(cfg_path), "--out", str(run), "--device", "cpu"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "x 2 processes" in res.stdout + res.stderr
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "val_dice_kidney" in rows[0]  # one row per epoch: only rank 0 logs
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 2
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    # the run resumes under torchrun too, from the checkpoint rank 0 wrote
    res = subprocess.run([*cmd, "--epochs", "3", "--resume"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3
