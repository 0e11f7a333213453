"""The per-case ledger in the output folder: the source of truth of a batch.

Layout of ``OUT``::

    predictions/<case>.nii.gz, <case>.json   outputs; a case is done when its sidecar is here with the batch's
                                             model and config hashes (and, for NIfTI inputs, the input's hash)
    ledger/spec.json, ledger/cases.json      the batch (model identity, options) and its cases (+ chunks)
    ledger/locks/<case>.lock                 a claim: created atomically (link of a complete file, never
                                             overwritten by a rival), lease = mtime + lease_s, renewed by touching
    ledger/staging/<case>.<token>/           where a worker writes; moved into predictions/ only while it
                                             still holds the claim, the sidecar last
    ledger/done/<case>.json                  how a finished case was computed (attempt, worker, times)
    ledger/failed/<case>.json                why a case failed (error, crash twice, timeout)

A claim is taken over when the launcher marked its worker crashed, when its lease expired, or when its process
is gone from this host. Taking over renames the old lock to a unique name first, so of two rivals only one wins.
A claim is ``running`` while its case is read, in the network or written, and ``queued`` while it waits between two
stages of a worker's pipeline; only a running claim's loss counts as an attempt.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from medpipe.batch.records import BatchCase, BatchSpec, Claim, Completion, Failure, read_json
from medpipe.errors import OutputError
from medpipe.io.atomic import write_json_atomic
from medpipe.runtime import sha256_files

HOST = socket.gethostname()
#: Age after which a temporary file in ``ledger/locks/`` is taken for one whose writer was killed.
STALE_TEMP_S = 2.0


def inputs_stat(case: BatchCase) -> list[list[int]]:
    """[size, mtime_ns] of each input file ([] if one is missing): a changed input changes this."""
    out = []
    for f in case.files:
        try:
            st = os.stat(f)
        except OSError:
            return []
        out.append([st.st_size, st.st_mtime_ns])
    return out


def process_start(pid: int) -> str:
    """The start time of a process (Linux ``/proc/<pid>/stat`` field 22), '' when unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def process_alive(pid: int, start: str) -> bool:
    """Is ``pid`` on this host still the process that took the claim (same start time)?"""
    if start:
        return process_start(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Ledger:
    """One batch's ledger under ``out`` (see the module docstring)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.root = self.out / "ledger"
        self.predictions = self.out / "predictions"
        self.locks = self.root / "locks"
        self.done_dir = self.root / "done"
        self.failed_dir = self.root / "failed"
        self.staging = self.root / "staging"
        self.logs = self.out / "logs"

    # ---- setup and the batch description -------------------------------------------------------------------------
    def create(self) -> None:
        for d in (self.predictions, self.locks, self.done_dir, self.failed_dir, self.staging, self.logs):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OutputError(f"cannot create the batch ledger: {err.strerror or err}", path=d) from err

    def write_spec(self, spec: BatchSpec, cases: list[BatchCase], chunks: list[list[str]] | None = None) -> None:
        write_json_atomic(self.root / "cases.json", {"format": "medpipe-batch-cases/1",
                                                     "cases": [c.to_json() for c in cases],
                                                     "chunks": chunks or []})
        write_json_atomic(self.root / "spec.json", spec.to_json())

    def read_spec(self) -> BatchSpec:
        data = read_json(self.root / "spec.json")
        if data is None:
            raise OutputError("not a batch output folder (no ledger/spec.json)", path=self.out,
                              hint="start a batch with `medpipe batch MODEL INPUT... -o OUT`")
        return BatchSpec.from_json(data)

    def read_cases(self, chunk: int | None = None) -> list[BatchCase]:
        data = read_json(self.root / "cases.json")
        if data is None:
            raise OutputError("batch ledger has no readable cases.json", path=self.root)
        cases = [BatchCase.from_json(c) for c in data["cases"]]
        if chunk is None:
            return cases
        wanted = set(data["chunks"][chunk])
        return [c for c in cases if c.case_id in wanted]

    # ---- per-case state ------------------------------------------------------------------------------------------
    def sidecar(self, case_id: str) -> Path:
        return self.predictions / f"{case_id}.json"

    def lock_path(self, case_id: str) -> Path:
        return self.locks / f"{case_id}.lock"

    def is_done(self, case: BatchCase, spec: BatchSpec, *, check_input: bool = False) -> bool:
        """Done: the sidecar is in place, says ok, names this batch's model and config, and its mask exists;
        with ``check_input`` the NIfTI inputs' sha256 must match too (a changed input is recomputed)."""
        meta = read_json(self.sidecar(case.case_id))
        if meta is None or meta.get("status") != "ok":
            return False
        if meta.get("config_hash") != spec.config_hash or meta.get("model", {}).get("sha256") != spec.model_sha256:
            return False
        if not (self.predictions / str(meta.get("mask", ""))).is_file() or not self._has_outputs(case.case_id, spec,
                                                                                                  meta):
            return False
        if check_input and case.files:
            comp = self.completion(case.case_id)
            stat = inputs_stat(case)
            if comp is not None and stat and comp.inputs_stat == stat:
                return True  # same sizes and mtimes as when it was computed: not read again
            try:
                return sha256_files([Path(f) for f in case.files]) == meta.get("input_sha256")
            except OSError:
                return False
        return True

    def _has_outputs(self, case_id: str, spec: BatchSpec, meta: dict[str, object]) -> bool:
        """Every output the batch asks for is there: DICOM formats named in the sidecar, the requested maps."""
        opts = spec.infer_options
        outputs = meta.get("outputs")
        named = outputs if isinstance(outputs, dict) else {}
        if any(f not in named for f in opts.get("formats") or () if f != "nifti"):
            return False
        maps = [m for m, on in (("probabilities", opts.get("save_probabilities")),
                                ("uncertainty", opts.get("save_uncertainty"))) if on]
        return all((self.predictions / f"{case_id}_{m}.nii.gz").is_file() for m in maps)

    def invalidate(self, case_id: str) -> None:
        """A done case is to be computed again (its input changed): its sidecar, the mark of a finished case, goes
        first; the outputs stay until a new attempt replaces them."""
        self.sidecar(case_id).unlink(missing_ok=True)

    def failure(self, case_id: str) -> Failure | None:
        data = read_json(self.failed_dir / f"{case_id}.json")
        return Failure.from_json(data) if data else None

    def completion(self, case_id: str) -> Completion | None:
        data = read_json(self.done_dir / f"{case_id}.json")
        return Completion.from_json(data) if data else None

    def read_claim(self, case_id: str) -> tuple[Claim | None, float]:
        """The lock's claim and mtime; (None, 0) when there is no lock."""
        path = self.lock_path(case_id)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None, 0.0
        data = read_json(path)
        return (Claim.from_json(data) if data else None), mtime

    def claim_is_live(self, claim: Claim | None, mtime: float, lease_s: float) -> bool:
        """A lock holds while its worker runs: not marked crashed, lease not expired, process not gone."""
        if claim is None:  # unreadable: only a lock being replaced; trust it while its lease runs
            return time.time() - mtime < lease_s
        if claim.state not in ("queued", "running") or time.time() - mtime >= lease_s:
            return False
        return claim.host != HOST or process_alive(claim.pid, claim.pid_start)

    def held_by(self, worker: str) -> list[Claim]:
        """The claims a worker holds (a few files: only cases in flight have locks)."""
        held = []
        for p in self.locks.glob("*.lock"):
            if p.name.startswith("."):
                continue
            data = read_json(p)
            if data and data.get("worker") == worker:
                held.append(Claim.from_json(data))
        return held

    def clear_failures(self, case_ids: set[str]) -> None:
        for p in self.failed_dir.glob("*.json"):
            if p.stem in case_ids:
                p.unlink(missing_ok=True)

    # ---- claiming ------------------------------------------------------------------------------------------------
    def claim(self, case_id: str, worker: str, spec: BatchSpec, state: str = "running") -> Claim | None:
        """Take the case, or None when another worker holds it (or it just failed for good). ``state`` queued:
        held in reserve by a worker's pipeline (see :meth:`set_state`)."""
        path = self.lock_path(case_id)
        mine = Claim(case_id, uuid.uuid4().hex, worker, HOST, os.getpid(), process_start(os.getpid()), 1, time.time(),
                     state)
        if self._link_new(path, mine):
            return mine
        old, mtime = self.read_claim(case_id)
        if not mtime or self.claim_is_live(old, mtime, spec.lease_s):
            return None
        if old is None:  # an unreadable lock whose lease expired (a write cut short): as if a dead first attempt
            old = Claim(case_id, "", "unknown", HOST, 0, "", 1, mtime, "crashed", "unreadable lock")
        tomb = self.locks / f".{case_id}.stale.{mine.token}"
        try:
            os.rename(path, tomb)  # of two rivals taking over, only one finds the lock to rename
        except FileNotFoundError:
            return None
        moved = read_json(tomb)
        if (moved or {}).get("token", "") != old.token:  # a fresh lock slipped in between: give it back
            with contextlib.suppress(OSError):
                os.link(tomb, path)
            tomb.unlink(missing_ok=True)
            return None
        tomb.unlink(missing_ok=True)
        shutil.rmtree(self.staging / f"{case_id}.{old.token}", ignore_errors=True)  # the dead attempt's files
        if old.state != "queued" and old.attempt >= spec.max_attempts:
            reason = old.reason or "its worker stopped renewing the lease (lost or killed)"
            self._write_failure(Failure(case_id, "crash", f"{reason}; tried {old.attempt} times", old.attempt,
                                        time.time(), old.worker))
            return None
        # a queued claim's worker died before the case reached the network: that was not an attempt
        mine = replace(mine, attempt=old.attempt + (0 if old.state == "queued" else 1))
        return mine if self._link_new(path, mine) else None

    def _link_new(self, path: Path, claim: Claim) -> bool:
        """Create ``path`` holding ``claim``, complete from its first instant, only if it does not exist."""
        tmp = self.locks / f".{claim.case_id}.new.{claim.token}"
        tmp.write_text(json.dumps(claim.to_json()))
        try:
            os.link(tmp, path)
            return True
        except (FileExistsError, FileNotFoundError):  # taken; or the temporary file was tidied away under us
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def holds(self, claim: Claim) -> bool:
        data = read_json(self.lock_path(claim.case_id))
        return data is not None and data.get("token") == claim.token

    def renew(self, claim: Claim) -> bool:
        """Extend the lease; False when the claim was lost (taken over after the lease expired)."""
        if not self.holds(claim):
            return False
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.lock_path(claim.case_id))
            return True
        return False

    def set_state(self, claim: Claim, state: str) -> Claim | None:
        """Rewrite a held claim's state: ``running`` while its case is read, in the network or written (a death of
        its worker now counts as an attempt; ``--case-timeout`` counts from the last time it became running),
        ``queued`` while it waits between two stages of its worker's pipeline. None when the claim was lost."""
        if not self.holds(claim):
            return None
        new = replace(claim, state=state, claimed_at=time.time() if state == "running" else claim.claimed_at)
        return new if self._replace_lock(new) else None

    def release(self, claim: Claim) -> None:
        if self.holds(claim):
            self.lock_path(claim.case_id).unlink(missing_ok=True)

    def mark_crashed(self, claim: Claim, reason: str) -> None:
        """The launcher saw the claim's worker die: the case can be taken over at once (attempt counted)."""
        if self.holds(claim):
            self._replace_lock(replace(claim, state="crashed", reason=reason))

    def _replace_lock(self, claim: Claim) -> bool:
        """Rewrite a held lock in one rename (a reader sees the old claim or the new one); its temporary file is
        named after the claim, so :meth:`tidy` can tell what a killed writer left."""
        tmp = self.locks / f".{claim.case_id}.new.{claim.token}"
        try:
            tmp.write_text(json.dumps(claim.to_json()))
            os.replace(tmp, self.lock_path(claim.case_id))
        except FileNotFoundError:  # removed under us by a tidy that took it for a dead writer's
            return False
        return True

    def tidy(self, spec: BatchSpec) -> None:
        """Remove what dead workers left: locks of cases that are done, temporary files of lock writes cut short,
        staging folders no live claim owns."""
        for path in self.locks.glob("*"):
            if path.name.startswith("."):  # a lock write lives for microseconds: one a few seconds old was cut short
                with contextlib.suppress(OSError):
                    if time.time() - path.stat().st_mtime > STALE_TEMP_S:
                        path.unlink()
                continue
            if path.suffix != ".lock":
                continue
            claim, mtime = self.read_claim(path.stem)
            if not self.claim_is_live(claim, mtime, spec.lease_s) and self.sidecar(path.stem).is_file():
                path.unlink(missing_ok=True)
        for folder in self.staging.iterdir() if self.staging.is_dir() else ():
            case_id, _, token = folder.name.rpartition(".")
            claim, mtime = self.read_claim(case_id)
            if claim is None or claim.token != token or not self.claim_is_live(claim, mtime, spec.lease_s):
                shutil.rmtree(folder, ignore_errors=True)

    # ---- finishing -----------------------------------------------------------------------------------------------
    def staging_dir_for(self, claim: Claim) -> Path:
        """A private, new folder for one attempt's outputs (its owner removes it; :meth:`tidy` removes what a dead
        worker left)."""
        folder = self.staging / f"{claim.case_id}.{claim.token}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @contextlib.contextmanager
    def staging_dir(self, claim: Claim) -> Iterator[Path]:
        """A private folder for one attempt's outputs; removed afterwards, whatever happens."""
        folder = self.staging_dir_for(claim)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def commit(self, claim: Claim, staged: Path, case: BatchCase | None = None) -> bool:
        """Move a finished attempt's files into ``predictions/`` (the sidecar ``<case>.json`` last) while the claim
        still holds; False (nothing moved) when the claim was lost."""
        if not self.holds(claim):
            return False
        sidecar = staged / f"{claim.case_id}.json"
        if not sidecar.is_file():
            raise OutputError("a finished case left no sidecar", path=sidecar)
        for f in sorted(p for p in staged.iterdir() if p != sidecar):
            os.replace(f, self.predictions / f.name)
        write_json_atomic(self.done_dir / f"{claim.case_id}.json",
                          Completion(claim.case_id, claim.worker, claim.host, claim.attempt, claim.claimed_at,
                                     time.time(), inputs_stat(case) if case else []).to_json())
        (self.failed_dir / f"{claim.case_id}.json").unlink(missing_ok=True)
        os.replace(sidecar, self.sidecar(claim.case_id))
        self.release(claim)
        return True

    def fail(self, claim: Claim, kind: str, reason: str) -> None:
        """Record a failed case and drop its claim."""
        self._write_failure(Failure(claim.case_id, kind, reason, claim.attempt, time.time(), claim.worker))
        self.release(claim)

    def _write_failure(self, failure: Failure) -> None:
        write_json_atomic(self.failed_dir / f"{failure.case_id}.json", failure.to_json())
