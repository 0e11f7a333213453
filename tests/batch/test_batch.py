"""`medpipe batch` with the local launcher: the ledger (claims, leases, commits), crash isolation with one retry,
killing the whole batch and resuming, contention between workers, refusing an unwritable output folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medpipe.batch.ledger import Ledger
from medpipe.batch.manifest import load_manifest
from medpipe.batch.records import BatchCase, BatchSpec, Claim
from medpipe.cli import app
from medpipe.errors import InputError
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

runner = CliRunner()
IDS6 = [f"case{i:03d}" for i in range(6)]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "run")


@pytest.fixture(scope="module")
def inputs6(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cases(tmp_path_factory.mktemp("in6"), 6)


def _spec(lease_s: float = 60.0) -> BatchSpec:
    return BatchSpec("m", "m/best.pt", "a" * 64, "cfg", {}, lease_s, None, 2, time.time())


# ---- the ledger rules, without inference --------------------------------------------------------------------------
def test_claim_is_exclusive_and_an_expired_lease_is_taken_over(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.create()
    spec = _spec(lease_s=1.0)
    first = ledger.claim("a", "w1", spec)
    assert first is not None and first.attempt == 1
    assert ledger.claim("a", "w2", spec) is None  # held and renewed
    assert ledger.renew(first)
    old = time.time() - 5
    os.utime(ledger.lock_path("a"), (old, old))  # the lease lapses (worker stopped renewing)
    second = ledger.claim("a", "w2", spec)
    assert second is not None and second.attempt == 2 and second.worker == "w2"
    assert not ledger.renew(first) and not ledger.holds(first)  # the first worker learns it lost the case
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "a.json").write_text("{}")
    assert not ledger.commit(first, staged)  # and cannot commit
    assert not (tmp_path / "predictions" / "a.json").exists()
    os.utime(ledger.lock_path("a"), (old, old))
    assert ledger.claim("a", "w3", spec) is None  # the second attempt was the last: the case is failed
    failure = ledger.failure("a")
    assert failure is not None and failure.kind == "crash" and failure.attempts == 2


def test_a_claim_of_a_dead_process_is_taken_over_at_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.create()
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    dead = Claim("a", "t0", "w0", __import__("socket").gethostname(), proc.pid, "1", 1, time.time())
    ledger.lock_path("a").write_text(json.dumps(dead.to_json()))
    taken = ledger.claim("a", "w1", _spec())
    assert taken is not None and taken.attempt == 2
    ledger.mark_crashed(taken, "worker killed by SIGKILL")
    retaken = ledger.claim("a", "w2", _spec())
    assert retaken is None and "SIGKILL" in (ledger.failure("a").reason or "")  # type: ignore[union-attr]


def test_a_queued_claim_whose_worker_died_is_not_an_attempt(tmp_path: Path) -> None:
    """A worker's pipeline holds the next case in reserve (queued); if the worker dies then, the case never reached
    the network: it is taken over with the same attempt number, and never failed for it."""
    ledger = Ledger(tmp_path)
    ledger.create()
    spec = _spec()
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    host = __import__("socket").gethostname()
    for attempt in (1, 2):  # even at the last attempt: being held in reserve is no attempt
        dead = Claim("a", f"t{attempt}", "w0", host, proc.pid, "1", attempt, time.time(), "queued")
        ledger.lock_path("a").write_text(json.dumps(dead.to_json()))
        taken = ledger.claim("a", "w1", spec, state="queued")
        assert taken is not None and taken.attempt == attempt and taken.state == "queued"
        assert ledger.failure("a") is None
        running = ledger.set_state(taken, "running")
        assert running is not None and running.state == "running" and running.token == taken.token
        assert ledger.holds(running) and ledger.read_claim("a")[0] == running
        ledger.release(running)
    dead = Claim("a", "t9", "w0", host, proc.pid, "1", 1, time.time(), "running")  # started: it counts
    ledger.lock_path("a").write_text(json.dumps(dead.to_json()))
    taken = ledger.claim("a", "w1", spec)
    assert taken is not None and taken.attempt == 2


def test_tidy_removes_what_killed_lock_writes_left_but_not_a_write_in_progress(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.create()
    old, fresh = ledger.locks / ".a.new.t1", ledger.locks / ".b.new.t2"
    for f in (old, fresh):
        f.write_text("{}")
    past = time.time() - 10
    os.utime(old, (past, past))
    ledger.tidy(_spec())
    assert not old.exists() and fresh.exists()


@pytest.mark.slow
def test_a_worker_runs_its_cases_pipelined(tmp_path: Path, model: Path) -> None:
    """One worker reads the next case while the network runs the current one: at some instant it holds a running
    claim and a queued one; the masks are those of `medpipe infer`."""
    inputs = tiny_cases(tmp_path / "in", 6, (64, 64, 48))
    out = tmp_path / "out"
    proc = start(batch_cmd(model, inputs, out), tmp_path / "run.log")
    overlap: list[list[tuple[str, str]]] = []
    try:
        while proc.poll() is None:
            held = [(c.worker, c.state) for c in locks(out)]
            if len({w for w, _ in held}) == 1 and {s for _, s in held} == {"queued", "running"}:
                overlap.append(held)
            time.sleep(0.01)
    finally:
        proc.kill()
    assert proc.returncode == 0, (tmp_path / "run.log").read_text()
    assert overlap, "the worker never held a case in reserve while another was in the network"
    done = check_ledger(out, IDS6)
    assert {d["attempt"] for d in done.values()} == {1} and len({d["worker"] for d in done.values()}) == 1
    ref = runner.invoke(app, ["infer", str(model), str(inputs), "-o", str(tmp_path / "infer"), "--device", "cpu"])
    assert ref.exit_code == 0, ref.output
    for cid in IDS6:
        got = np.asarray(nib.load(str(out / "predictions" / f"{cid}.nii.gz")).dataobj)
        assert np.array_equal(got, np.asarray(nib.load(str(tmp_path / "infer" / f"{cid}.nii.gz")).dataobj)), cid


def test_two_workers_claiming_200_cases_at_once_take_each_exactly_once(tmp_path: Path) -> None:
    Ledger(tmp_path).create()
    go = str(time.time() + 2.0)
    procs = [subprocess.Popen([sys.executable, "-m", "tests.batch_hammer", str(tmp_path), w, "200",
                               str(tmp_path / f"{w}.txt"), go], env=env()) for w in ("w1", "w2")]
    for p in procs:
        assert p.wait(120) == 0
    got = [(tmp_path / f"{w}.txt").read_text().split() for w in ("w1", "w2")]
    assert sorted(got[0] + got[1]) == [f"c{i:03d}" for i in range(200)]  # all, none twice
    assert got[0] and got[1]  # both really competed
    for cid in got[0]:
        assert json.loads((tmp_path / "predictions" / f"{cid}.json").read_text())["worker"] == "w1"
    assert not list((tmp_path / "ledger" / "locks").iterdir())


def test_manifests_csv_and_json(tmp_path: Path) -> None:
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "dcm").mkdir()
    (tmp_path / "m.csv").write_text("case_id,image\nA1,a.nii.gz\nB2,dcm\n")
    cases = load_manifest(tmp_path / "m.csv", ("CT",))
    assert cases == [BatchCase("A1", (str(tmp_path / "a.nii.gz"),)), BatchCase("B2", dicom_dir=str(tmp_path / "dcm"))]
    (tmp_path / "m.json").write_text(json.dumps({"cases": [{"case_id": "A1", "inputs": ["a.nii.gz"]}]}))
    assert load_manifest(tmp_path / "m.json", ("CT",)) == cases[:1]
    (tmp_path / "bad.csv").write_text("case_id,image\nA1,a.nii.gz\nA1,a.nii.gz\n")
    with pytest.raises(InputError, match="two inputs give case 'A1'"):
        load_manifest(tmp_path / "bad.csv", ("CT",))
    (tmp_path / "bad2.csv").write_text("case_id,image\n../x,a.nii.gz\n")
    with pytest.raises(InputError, match="cannot name a file"):
        load_manifest(tmp_path / "bad2.csv", ("CT",))
    (tmp_path / "bad3.csv").write_text("case_id,image\nA1,missing.nii.gz\n")
    with pytest.raises(InputError, match="input not found"):
        load_manifest(tmp_path / "bad3.csv", ("CT",))


# ---- real batches ----------------------------------------------------------------------------------------------
def test_batch_with_two_workers_then_status_and_a_rerun_that_computes_nothing(tmp_path: Path, model: Path,
                                                                              inputs6: Path) -> None:
    out = tmp_path / "out"
    res = subprocess.run(batch_cmd(model, inputs6, out, "--workers", "2"), env=env(), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "6 done, 0 failed" in res.stdout
    done = check_ledger(out, IDS6)
    assert {d["attempt"] for d in done.values()} == {1}
    assert len(list((out / "logs").glob("w*.log"))) == 2  # two workers ran (how the cases split is up to timing)
    report = json.loads((out / "batch.json").read_text())
    assert report["counts"] == {"total": 6, "done": 6, "failed": 0, "running": 0, "pending": 0}
    assert [r["status"] for r in report["rows"]] == ["done"] * 6 and report["cases_per_hour"] > 0
    for row in report["rows"]:  # the sidecar's QC review reasons and label volumes reach the report
        qc = json.loads((out / "predictions" / f"{row['case_id']}.json").read_text())["qc"]
        assert row["qc_flags"] == (qc["reasons"] if qc["review"] else [])
        assert row["volumes"] == {"organ": qc["labels"]["1"]["volume_ml"]}
    assert "case000" in (out / "batch.html").read_text()
    status = runner.invoke(app, ["batch", "status", str(out)])
    assert status.exit_code == 0 and "6 done, 0 failed, 0 running, 0 pending" in status.output
    # the same command again: nothing is recomputed
    before = {p.name: p.stat().st_mtime_ns for p in (out / "predictions").iterdir()}
    res = subprocess.run(batch_cmd(model, inputs6, out, "--workers", "2"), env=env(), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "predictions").iterdir()} == before
    assert check_ledger(out, IDS6) == done


def test_status_of_a_folder_that_is_not_a_batch(tmp_path: Path) -> None:
    res = runner.invoke(app, ["batch", "status", str(tmp_path)])
    assert res.exit_code == 1 and "not a batch output folder" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_worker_killed_mid_case_is_retried_once_then_the_case_fails(tmp_path: Path, model: Path,
                                                                    inputs6: Path) -> None:
    """Case X: its worker is SIGKILLed once -> recomputed by a fresh worker. Case Y: killed twice -> failed with
    the signal as reason, the batch goes on, exit code 1; the rerun computes Y only."""
    out = tmp_path / "out"
    proc = start(batch_cmd(model, inputs6, out, "--workers", "2"), tmp_path / "run1.log")
    try:
        x = kill_worker_mid_case(out, 400)
        y = kill_worker_mid_case(out, 400, attempt=1, skip=(x,))
        assert y.case_id != x.case_id
        kill_worker_mid_case(out, 400, case_id=y.case_id, attempt=2)
        assert proc.wait(600) == 1, (tmp_path / "run1.log").read_text()
    finally:
        proc.kill()
    failure = json.loads((out / "ledger" / "failed" / f"{y.case_id}.json").read_text())
    assert failure["kind"] == "crash" and "SIGKILL" in failure["reason"] and failure["attempts"] == 2
    report = json.loads((out / "batch.json").read_text())
    assert report["rows"][0]["case_id"] == y.case_id and report["rows"][0]["status"] == "failed"  # worst first
    assert report["counts"]["done"] == 5
    assert not (out / "predictions" / f"{y.case_id}.json").exists()
    first = {p.stem: json.loads(p.read_text()) for p in (out / "ledger" / "done").glob("*.json")}
    assert first[x.case_id]["attempt"] == 2  # the killed case was computed again, by another worker
    assert first[x.case_id]["worker"] != x.worker
    res = subprocess.run(batch_cmd(model, inputs6, out, "--workers", "2"), env=env(), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    done = check_ledger(out, IDS6)
    assert {k: v for k, v in done.items() if k != y.case_id} == first  # only the failed case was recomputed


@pytest.mark.slow
def test_whole_batch_killed_then_the_same_command_finishes_it(tmp_path: Path, model: Path, inputs6: Path) -> None:
    out = tmp_path / "out"
    cmd = batch_cmd(model, inputs6, out, "--workers", "2")
    proc = start(cmd, tmp_path / "run1.log")
    try:
        wait_until(lambda: len(list((out / "ledger" / "done").glob("*.json"))) >= 1
                   and any(c.state == "running" for c in locks(out)), 400, "a finished case and one in flight")
        os.killpg(proc.pid, signal.SIGSTOP)  # freeze launcher and workers, then kill them all
        finished_names = {p.stem for p in (out / "predictions").glob("*.json")}
        in_flight = {c.case_id: c.state for c in locks(out) if c.case_id not in finished_names}
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    finished = {p.stem: json.loads((out / "ledger" / "done" / p.name).read_text())
                for p in (out / "predictions").glob("*.json")}  # the sidecar is the mark of a finished case
    assert not in_flight.keys() & set(finished)
    for side in (out / "predictions").glob("*.json"):  # what is visible as done is whole
        assert json.loads(side.read_text())["status"] == "ok"
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    done = check_ledger(out, IDS6)
    for cid, rec in finished.items():
        assert done[cid] == rec  # finished before the kill: not recomputed
    for cid, state in in_flight.items():  # killed mid-case: recomputed (an attempt only if it had started)
        assert done[cid]["attempt"] == (2 if state == "running" else 1), (cid, state)


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir()
    if os.geteuid() != 0:
        return False
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    return res.returncode == 0


@pytest.mark.parametrize("kind", ["read-only", "full"])
def test_unwritable_output_is_refused_before_any_inference(tmp_path: Path, model: Path, inputs6: Path,
                                                           kind: str) -> None:
    mnt = tmp_path / "mnt"
    if not _mount_tmpfs(mnt, "ro,size=1m" if kind == "read-only" else "size=256k"):
        pytest.skip("needs root and tmpfs mounts to make a read-only or full file system")
    try:
        if kind == "full":
            filler = mnt / "filler"
            with filler.open("wb") as fh:
                try:
                    fh.write(b"\0" * (1 << 20))
                except OSError:
                    pass
        res = runner.invoke(app, ["batch", str(model), str(inputs6), "-o", str(mnt / "out"), "--device", "cpu"])
        text = " ".join(res.output.split())
        assert res.exit_code == 1 and "Traceback" not in text, text
        assert ("not writable" in text or "Read-only" in text) if kind == "read-only" else "disk full" in text
        assert not list(mnt.rglob("*.nii.gz")) and not list(mnt.rglob("w*.log"))  # no worker ever started
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.slow
def test_a_case_that_runs_past_the_timeout_is_ended_and_failed(tmp_path: Path, model: Path) -> None:
    inputs = tiny_cases(tmp_path / "in", 1, (96, 96, 64))  # ~100 windows and a 0.6 M-voxel export: far over 0.2 s
    out = tmp_path / "out"
    res = subprocess.run(batch_cmd(model, inputs, out, "--case-timeout", "0.2"), env=env(), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 1, res.stdout + res.stderr
    failure = json.loads((out / "ledger" / "failed" / "case000.json").read_text())
    assert failure["kind"] == "timeout" and "--case-timeout 0.2" in failure["reason"]
    assert "1 failed" in res.stdout and "timeout" in " ".join(res.stdout.split())
    assert not list((out / "predictions").iterdir()) and not list((out / "ledger" / "locks").iterdir())


def test_cli_dispatch_run_by_default_and_status(tmp_path: Path, model: Path) -> None:
    res = runner.invoke(app, ["batch", "--help"])
    assert res.exit_code == 0 and "run" in res.output and "status" in res.output
    res = runner.invoke(app, ["batch", str(model), "-o", str(tmp_path / "out")])  # `batch MODEL` means `batch run`
    assert res.exit_code == 1 and "no inputs" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["batch", "run", str(model), str(tmp_path), "-o", str(tmp_path / "o"), "--gpus", "x"])
    assert res.exit_code == 1 and "--gpus 'x'" in res.output
    res = runner.invoke(app, ["batch", str(model), str(tmp_path), "-o", str(tmp_path / "o"), "--sbatch", "novalue"])
    assert res.exit_code == 1 and "KEY=VALUE" in res.output


def test_gpu_slots_give_each_worker_its_own_visible_device(tmp_path: Path, model: Path, inputs6: Path) -> None:
    """`--gpus 3,5`: one worker per GPU, each started with CUDA_VISIBLE_DEVICES of its own. The spec runs on the
    CPU here (no GPU on this machine): the test reads each live worker's environment from /proc."""
    import threading

    from medpipe.batch.adapter import identity, open_predictor
    from medpipe.batch.local import LocalLauncher
    from medpipe.batch.manifest import cases_from_inputs

    out = tmp_path / "out"
    ledger = Ledger(out)
    ledger.create()
    ident = identity(open_predictor(model, {"device": "cpu"}))
    spec = BatchSpec(str(model), ident.checkpoint, ident.model_sha256, ident.config_hash, {"device": "cpu"}, 60.0,
                     None, 2, time.time())
    ledger.write_spec(spec, cases_from_inputs([inputs6], ident.channels))
    launcher = LocalLauncher(out, gpus=["3", "5"])
    seen: dict[int, str] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for w in list(launcher.live.values()):
                try:
                    environ = Path(f"/proc/{w.proc.pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                visible = [e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"CUDA_VISIBLE_DEVICES=")]
                seen[w.proc.pid] = visible[0] if visible else ""
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        launcher.run()
    finally:
        done.set()
        watcher.join()
    assert sorted(seen.values()) == ["3", "5"], seen  # two workers, one per GPU
    check_ledger(out, IDS6)


@pytest.mark.slow
def test_manifest_batch_and_a_changed_input_is_recomputed(tmp_path: Path, model: Path) -> None:
    """Cases from a CSV manifest take its ids; a rerun recomputes only the case whose input changed (the sidecar's
    input hash no longer matches), the others are kept."""
    inputs = tiny_cases(tmp_path / "in", 3)
    (tmp_path / "cases.csv").write_text("case_id,image\n" + "".join(
        f"patient-{i},in/case{i:03d}.nii.gz\n" for i in range(3)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medpipe.cli", "batch", str(model), "--manifest", str(tmp_path / "cases.csv"),
           "-o", str(out), "--device", "cpu"]
    ids = [f"patient-{i}" for i in range(3)]
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    first = check_ledger(out, ids)
    before = json.loads((out / "predictions" / "patient-1.json").read_text())["input_sha256"]
    changed = tiny_cases(tmp_path / "other", 3)  # other phantoms (seeds 0-2) of the same size: copy one over
    (inputs / "case001.nii.gz").write_bytes((changed / "case002.nii.gz").read_bytes())
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    again = check_ledger(out, ids)
    assert again["patient-0"] == first["patient-0"] and again["patient-2"] == first["patient-2"]
    assert again["patient-1"]["finished_at"] > first["patient-1"]["finished_at"]
    assert json.loads((out / "predictions" / "patient-1.json").read_text())["input_sha256"] != before
