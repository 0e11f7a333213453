"""Helpers for the batch tests: a tiny model, tiny CT phantoms, running the CLI in a process, killing workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from medpipe.batch.records import Claim, read_json
from medpipe.config import config_from_dict
from medpipe.models.checkpoint import save_checkpoint
from medpipe.models.factory import build_model
from tests.conftest import REPO, make_affine, save_nifti, sphere_phantom


def tiny_checkpoint(folder: Path) -> Path:
    """An untrained (random) tiny CT model in a run folder: the ledger does not depend on the weights."""
    cfg = config_from_dict({
        "labels": {0: "background", 1: "organ"},
        "transforms": {"spacing_mm": [2.0, 2.0, 2.0], "crop_foreground": False, "hu_window": [-1000.0, 1000.0]},
        "model": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
        "inference": {"roi_size_vox": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.0},
    })
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "best.pt", build_model(cfg), cfg)
    return folder


def tiny_cases(folder: Path, n: int, shape: tuple[int, int, int] = (12, 12, 12)) -> Path:
    """``n`` CT phantoms (HU, with air) named case000... on an anisotropic, flipped grid."""
    folder.mkdir(parents=True, exist_ok=True)
    aff = make_affine((0, 1, 2), (-1, 1, 1), (2.0, 1.8, 2.5), origin=(10.0, -20.0, 5.0))
    for i in range(n):
        img, _ = sphere_phantom(shape, aff, radii_mm=(6.0, 3.0), seed=i)
        img[0, 0, 0] = -1000.0
        save_nifti(folder / f"case{i:03d}.nii.gz", img, aff, np.int16)
    return folder


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def batch_cmd(model: Path, inputs: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medpipe.cli", "batch", str(model), str(inputs), "-o", str(out),
            "--device", "cpu", *extra]


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start the CLI in its own process group (so the whole batch can be killed at once)."""
    with log.open("ab") as fh:
        return subprocess.Popen(cmd, env=env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def locks(out: Path) -> list[Claim]:
    found = []
    for p in (out / "ledger" / "locks").glob("*.lock"):
        data = read_json(p)
        if data and not p.name.startswith("."):
            found.append(Claim.from_json(data))
    return found


def kill_worker_mid_case(out: Path, timeout_s: float, case_id: str | None = None, attempt: int = 1,
                         skip: tuple[Claim, ...] = ()) -> Claim:
    """SIGKILL the worker holding a case (``case_id``, or any) at ``attempt``: the worker is stopped first, then
    its lock is read again, so the kill certainly lands while it holds that case."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for claim in locks(out):
            if claim.state != "running" or claim.attempt != attempt or (case_id and claim.case_id != case_id):
                continue
            if any(claim.token == s.token for s in skip):  # killed already; the launcher has not reaped it yet
                continue
            try:
                os.kill(claim.pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            data = read_json(out / "ledger" / "locks" / f"{claim.case_id}.lock")
            if data and data.get("token") == claim.token:
                os.kill(claim.pid, signal.SIGKILL)
                return claim
            os.kill(claim.pid, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"no worker held {case_id or 'a case'} at attempt {attempt} within {timeout_s} s")


def check_ledger(out: Path, case_ids: list[str]) -> dict[str, dict]:
    """Every case done exactly once and nothing partial: one mask, lesion table and sidecar per case, no temp files, no
    staging leftovers, no locks; returns the completion records."""
    pred = out / "predictions"
    names = sorted(p.name for p in pred.iterdir())
    expected = [f"{c}{suffix}" for c in case_ids for suffix in (".nii.gz", ".json", ".lesions.csv")]
    assert names == sorted(expected), names
    for c in case_ids:
        side = json.loads((pred / f"{c}.json").read_text())
        assert side["status"] == "ok" and side["case"] == c and side["mask"] == f"{c}.nii.gz"
    assert not list((out / "ledger" / "staging").iterdir())
    assert not list((out / "ledger" / "locks").iterdir())
    assert not list((out / "ledger" / "failed").iterdir())
    done = {p.stem: json.loads(p.read_text()) for p in (out / "ledger" / "done").glob("*.json")}
    assert sorted(done) == sorted(case_ids)
    return done
