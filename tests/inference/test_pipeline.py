"""The pipelined case loop: order kept, bounded queues (back-pressure), a bad case fails alone, errors surface
instead of hanging, resume still skips finished cases, and the masks equal those of the sequential loop."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medpipe.inference.batch import infer
from medpipe.inference.pipeline import Finished, run_pipelined
from tests.conftest import make_affine, save_nifti, sphere_phantom
from tests.inference_models import save_fold_folders


def test_order_and_back_pressure() -> None:
    lock = threading.Lock()
    state = {"read": 0, "written": 0, "ahead": 0}

    def read(x: int) -> int:
        with lock:
            state["read"] += 1
            state["ahead"] = max(state["ahead"], state["read"] - state["written"])
        return x

    def write(x: int) -> int:
        time.sleep(0.01)  # a slow disk
        with lock:
            state["written"] += 1
        return x * 10

    seen: list[int] = []
    results, times = run_pipelined(list(range(30)), read, lambda x: x + 1, write, queue_size=2,
                                   on_result=lambda r, i, n: seen.append(i))
    assert results == [(x + 1) * 10 for x in range(30)]
    assert seen == list(range(1, 31))
    # at most: 2 queued for compute, 1 computing, 2 queued for writing, 1 writing, 1 being read
    assert state["ahead"] <= 7
    assert times.n_cases == 30 and times.write_s >= 0.3 and times.wall_s >= times.write_s
    assert times.to_json()["sum_of_stages_s"] == pytest.approx(times.read_s + times.compute_s + times.write_s, abs=2e-3)


def test_finished_cases_pass_through_and_errors_surface() -> None:
    def read(x: int) -> int | Finished[str]:
        return Finished(f"failed {x}") if x == 2 else x

    results, _ = run_pipelined([1, 2, 3], read, lambda x: x, lambda x: f"ok {x}")
    assert results == ["ok 1", "failed 2", "ok 3"]

    def broken(x: int) -> int:
        if x == 5:
            raise ValueError("a bug, not a bad case")
        return x

    for stage in ("read", "compute", "write"):
        fns = {"read": lambda x: x, "compute": lambda x: x, "write": lambda x: x, stage: broken}
        with pytest.raises(ValueError, match="a bug"):
            run_pipelined(list(range(20)), fns["read"], fns["compute"], fns["write"], queue_size=1)


def test_pipelined_infer_matches_sequential_and_resumes(tmp_path: Path) -> None:
    cv = save_fold_folders(tmp_path / "cv", 1)
    inputs = []
    for k in range(4):
        aff = make_affine((0, 1, 2), (1, 1, 1), (1.1, 1.0, 2.2), (0, 0, 5 * k), (float(k), 0.0, 0.0))
        image, _ = sphere_phantom((30, 28, 12), aff, seed=k)
        inputs.append(save_nifti(tmp_path / f"case_{k}.nii.gz", image, aff, np.int16))
    (tmp_path / "case_bad.nii.gz").write_bytes(b"not a nifti")
    inputs.append(tmp_path / "case_bad.nii.gz")
    piped = infer(cv, inputs, tmp_path / "piped", device="cpu")
    status = {c.case_id: c.status for c in piped.cases}
    assert [c.case_id for c in piped.cases] == ["case_0", "case_1", "case_2", "case_3", "case_bad"]
    assert status == {"case_0": "ok", "case_1": "ok", "case_2": "ok", "case_3": "ok", "case_bad": "failed"}
    assert piped.stages is not None and piped.stages["n_cases"] == 5
    plain = infer(cv, inputs, tmp_path / "plain", device="cpu", pipelined=False)
    assert [c.status for c in plain.cases] == [c.status for c in piped.cases]
    for k in range(4):
        a = np.asarray(nib.load(str(tmp_path / "piped" / f"case_{k}.nii.gz")).dataobj)
        b = np.asarray(nib.load(str(tmp_path / "plain" / f"case_{k}.nii.gz")).dataobj)
        assert np.array_equal(a, b)
    again = infer(cv, inputs, tmp_path / "piped", device="cpu")
    assert [c.status for c in again.cases] == ["skipped"] * 4 + ["failed"]
