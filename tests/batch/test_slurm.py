"""`medpipe batch --launcher slurm` on a real one-node Slurm cluster (tests/services/slurm.py): submitit job arrays
of chunks, every case exactly once; a worker killed mid-case inside an array task, then the whole batch (array
tasks and submitting command) killed, and the same command finishing it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medpipe.cli import app
from tests.batch_cases import (
    batch_cmd,
    check_ledger,
    env,
    kill_worker_mid_case,
    locks,
    start,
    tiny_cases,
    tiny_checkpoint,
    wait_until,
)
from tests.services.slurm import SlurmCluster, slurm_cluster  # noqa: F401  (the fixture)

runner = CliRunner()
IDS = [f"case{i:03d}" for i in range(6)]
IDS12 = [f"case{i:03d}" for i in range(12)]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "run")


@pytest.fixture(scope="module")
def inputs6(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cases(tmp_path_factory.mktemp("in6"), 6)


@pytest.fixture(scope="module")
def inputs12(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cases(tmp_path_factory.mktemp("in12"), 12)


def _slurm_cmd(model: Path, inputs: Path, out: Path) -> list[str]:
    return batch_cmd(model, inputs, out, "--launcher", "slurm", "--chunk", "3", "--slurm-partition", "debug",
                     "--slurm-time", "10", "--slurm-cpus-per-task", "1")


@pytest.mark.slow
def test_slurm_array_batch_finishes_every_case_once(tmp_path: Path, slurm_cluster: SlurmCluster,  # noqa: F811
                                                    model: Path, inputs6: Path) -> None:
    out = tmp_path / "out"
    res = subprocess.run(_slurm_cmd(model, inputs6, out), env=env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "6 done, 0 failed" in res.stdout and "slurm" in res.stdout
    done = check_ledger(out, IDS)
    assert {d["attempt"] for d in done.values()} == {1}
    assert len({d["worker"] for d in done.values()}) == 2  # two array tasks (chunks of 3), one worker each
    logs = list((out / "logs" / "slurm").rglob("*_log.out"))
    assert len(logs) == 2  # submitit's per-task logs under OUT/logs/
    assert json.loads((out / "batch.json").read_text())["launcher"] == "slurm"


@pytest.mark.slow
def test_slurm_worker_killed_then_whole_batch_killed_then_rerun(tmp_path: Path,
                                                                slurm_cluster: SlurmCluster,  # noqa: F811
                                                                model: Path, inputs12: Path) -> None:
    out = tmp_path / "out"
    cmd = _slurm_cmd(model, inputs12, out)  # 12 cases in chunks of 3: work is still in flight after the retry
    proc = start(cmd, tmp_path / "run1.log")
    try:
        killed = kill_worker_mid_case(out, 400)  # inside an array task: retried by a fresh worker there
        wait_until(lambda: (out / "ledger" / "done" / f"{killed.case_id}.json").exists() and locks(out), 400,
                   "the killed case recomputed and another case in flight")
        jobs = slurm_cluster.run("squeue", "--noheader", "--format=%A").split()
        frozen = locks(out)
        for claim in frozen:
            os.kill(claim.pid, signal.SIGSTOP)  # freeze the workers in flight ...
        os.killpg(proc.pid, signal.SIGKILL)  # ... then kill the submitting command and every array task
        for job in jobs:
            subprocess.run(["scancel", "--full", "--signal=KILL", job], env=env(), check=False)
        for claim in locks(out):
            os.kill(claim.pid, signal.SIGKILL)
        proc.wait(30)
        subprocess.run(["scancel", *jobs], env=env(), check=False)
    finally:
        proc.kill()
    finished = {p.stem: json.loads((out / "ledger" / "done" / p.name).read_text())
                for p in (out / "predictions").glob("*.json")}  # the sidecar is the mark of a finished case
    assert finished[killed.case_id]["attempt"] == 2
    # what everything left once dead: claims without a sidecar are the cases killed mid-way (a worker of the array
    # that held no claim when the others were frozen may have finished more cases before the kill reached it)
    in_flight = {c.case_id: c.state for c in locks(out) if c.case_id not in finished}
    assert {c.case_id for c in frozen} - set(finished) <= in_flight.keys() and in_flight, (frozen, finished)
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    done = check_ledger(out, IDS12)
    for cid, rec in finished.items():
        assert done[cid] == rec  # done before the kill: not recomputed
    for cid, state in in_flight.items():  # killed mid-case: recomputed (an attempt only if it had started)
        assert done[cid]["attempt"] >= (2 if state == "running" else 1), (cid, state)


@pytest.mark.slow
def test_slurm_detach_sbatch_options_then_status(tmp_path: Path, slurm_cluster: SlurmCluster,  # noqa: F811
                                                 model: Path, inputs6: Path) -> None:
    """--detach returns after submitting; the array carries --slurm-array-parallelism, --sbatch extras and
    --slurm-python (the hook the Apptainer recipe uses); `medpipe batch status` follows it to the end."""
    out = tmp_path / "out"
    cmd = [*_slurm_cmd(model, inputs6, out), "--slurm-array-parallelism", "1", "--sbatch", "comment=medpipe-test",
           "--slurm-python", f"env MEDPIPE_TEST_MARK=1 {sys.executable}", "--detach"]
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    text = " ".join(res.stdout.split())
    assert "submitted 2 array task(s) for 6 case(s)" in text and "medpipe batch status" in text
    assert not (out / "batch.json").exists()  # detached: no waiting, no final report
    (script,) = list((out / "logs" / "slurm").rglob("*_submission.sh"))
    body = script.read_text()
    assert "#SBATCH --array=0-1%1" in body and "#SBATCH --comment=medpipe-test" in body
    assert "#SBATCH --partition=debug" in body and "#SBATCH --time=10" in body
    assert "env MEDPIPE_TEST_MARK=1" in body
    job = text.split("case(s): ")[1].split(";")[0]
    assert script.name == f"{job}_submission.sh"  # the job id the command printed is the array's

    def finished() -> bool:
        status = runner.invoke(app, ["batch", "status", str(out)])
        return status.exit_code == 0 and "6 done, 0 failed, 0 running, 0 pending" in status.output

    wait_until(finished, 400, "the detached array to finish")
    status = runner.invoke(app, ["batch", "status", str(out), "--report"])
    assert status.exit_code == 0 and "cases/hour" in status.output
    report = json.loads((out / "batch.json").read_text())
    assert report["counts"]["done"] == 6 and report["launcher"] == "slurm"
    done = check_ledger(out, IDS)
    assert len({d["worker"] for d in done.values()}) == 2  # the two tasks, one after the other (throttle 1)
