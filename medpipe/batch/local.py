"""The local launcher: N worker processes on this machine (one per GPU, or N on the CPU), watched.

A worker that dies (a crash, a SIGKILL from the out-of-memory killer) is reaped with its exit signal and peak
memory; the case it held is marked crashed in the ledger and taken over by a fresh worker, once; a second death
marks the case failed with the reason. ``case_timeout_s`` ends a worker whose case runs too long; that case is
marked failed (a hang is not retried). A Slurm array task runs this same launcher with one worker on its chunk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medpipe.batch.ledger import Ledger
from medpipe.batch.records import BatchCase
from medpipe.batch.status import BatchEvent, quick_counts
from medpipe.errors import OutputError

OnEvent = Callable[[BatchEvent], None]


@dataclass
class _Worker:
    wid: str
    slot: str | None
    proc: subprocess.Popen[bytes]
    started: float


def exit_reason(status: int, maxrss_kb: int, log: Path) -> str:
    """Words for a worker's end: the signal (with peak memory: SIGKILL is what the OOM killer sends) or code."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        text = f"worker killed by {name} (peak memory {maxrss_kb / 1024:.0f} MB"
        return text + ("; out of memory? the kernel's OOM killer sends SIGKILL)" if sig == signal.SIGKILL else ")")
    return f"worker exited with code {os.WEXITSTATUS(status)} (see {log})"


class LocalLauncher:
    """Start and watch worker processes until every case of ``chunk`` (or the batch) is done or failed."""

    def __init__(self, out: Path, *, workers: int = 1, gpus: list[str] | None = None, chunk: int | None = None,
                 on_event: OnEvent | None = None, poll_s: float = 0.2) -> None:
        self.ledger = Ledger(out)
        self.spec = self.ledger.read_spec()
        self.cases: list[BatchCase] = self.ledger.read_cases(chunk)
        self.slots: list[str | None] = list(gpus) if gpus else [None] * max(1, workers)
        self.chunk, self.on_event, self.poll_s = chunk, on_event, poll_s
        self.live: dict[str, _Worker] = {}
        self.finished: set[str] = set()
        self.spawned = 0
        self.idle_deaths = 0

    def _emit(self, kind: str, message: str = "") -> None:
        if self.on_event:
            self.on_event(BatchEvent(kind, message, quick_counts(self.ledger, self.cases)))

    # ---- processes -----------------------------------------------------------------------------------------------
    def _spawn(self, slot: str | None) -> None:
        wid = f"w{self.spawned}-{uuid.uuid4().hex[:8]}"
        env = dict(os.environ)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        cmd = [sys.executable, "-m", "medpipe.batch.worker", str(self.ledger.out), wid]
        if self.chunk is not None:
            cmd += ["--chunk", str(self.chunk)]
        log = self.ledger.logs / f"{wid}.log"
        with log.open("ab") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.live[wid] = _Worker(wid, slot, proc, time.time())
        self.spawned += 1
        self._emit("worker", f"{wid} started" + (f" on GPU {slot}" if slot is not None else ""))

    def _reap(self) -> None:
        for w in list(self.live.values()):
            pid, status, usage = os.wait4(w.proc.pid, os.WNOHANG)
            if pid == 0:
                continue
            w.proc.returncode = os.waitstatus_to_exitcode(status)
            del self.live[w.wid]
            self._ended(w, status, usage.ru_maxrss)

    def _ended(self, w: _Worker, status: int, maxrss_kb: int) -> None:
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return
        error = self.ledger.logs / f"{w.wid}.error"
        if error.is_file():
            raise OutputError(f"a worker could not start: {error.read_text().strip()}", path=self.ledger.logs)
        reason = exit_reason(status, maxrss_kb, self.ledger.logs / f"{w.wid}.log")
        held = self.ledger.held_by(w.wid)
        self.idle_deaths = 0 if held else self.idle_deaths + 1
        if self.idle_deaths > 3:
            raise OutputError(f"workers keep dying before they take a case ({reason})", path=self.ledger.logs)
        # blame the cases in the network or being written; the ones held in reserve only if there were none (the
        # death came while reading one of them)
        blamed = [c for c in held if c.state == "running"] or held
        for claim in held:
            if claim in blamed:
                self.ledger.mark_crashed(claim, reason)
                self._emit("crash", f"{claim.case_id}: {reason} (attempt {claim.attempt})")
            else:
                self.ledger.release(claim)

    def _check_timeouts(self) -> None:
        limit = self.spec.case_timeout_s
        if not limit:
            return
        for w in list(self.live.values()):
            for claim in self.ledger.held_by(w.wid):
                if claim.state == "running" and time.time() - claim.claimed_at > limit:
                    w.proc.kill()
                    os.wait4(w.proc.pid, 0)
                    w.proc.returncode = -signal.SIGKILL
                    del self.live[w.wid]
                    self.ledger.fail(claim, "timeout", f"case ran longer than --case-timeout {limit:g} s")
                    self._emit("timeout", f"{claim.case_id}: ended after {limit:g} s")
                    for other in self.ledger.held_by(w.wid):  # its other cases did nothing wrong: free again
                        self.ledger.release(other)
                    break

    def stop(self) -> None:
        for w in self.live.values():
            w.proc.terminate()
        deadline = time.time() + 5
        for w in self.live.values():
            try:
                w.proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        self.live.clear()

    # ---- the case list -------------------------------------------------------------------------------------------
    def _open_cases(self) -> tuple[int, int]:
        """(cases that a new worker could take now, cases held by live workers elsewhere)."""
        claimable = held_elsewhere = 0
        for case in self.cases:
            cid = case.case_id
            if cid in self.finished:
                continue
            if self.ledger.failure(cid) or self.ledger.is_done(case, self.spec):
                self.finished.add(cid)
                continue
            claim, mtime = self.ledger.read_claim(cid)
            if mtime and self.ledger.claim_is_live(claim, mtime, self.spec.lease_s):
                ours = claim is not None and claim.worker in self.live
                held_elsewhere += 0 if ours else 1
            else:
                claimable += 1
        return claimable, held_elsewhere

    def run(self) -> None:
        """Run until the cases are all done or failed (raises :class:`OutputError` if workers cannot start)."""
        last_emit = 0.0
        try:
            while True:
                self._reap()
                self._check_timeouts()
                if len(self.live) < len(self.slots) or not self.live:
                    claimable, elsewhere = self._open_cases()
                    busy = {w.slot for w in self.live.values()} if any(self.slots) else set()
                    free = [s for s in self.slots if s not in busy][: len(self.slots) - len(self.live)]
                    for slot in free[:claimable]:
                        if self.spawned >= 2 * (len(self.slots) + len(self.cases)) + 4:
                            raise OutputError("too many workers started for this batch", path=self.ledger.logs)
                        self._spawn(slot)
                    if not self.live and not claimable and not elsewhere:
                        break
                if time.time() - last_emit > 1.0:
                    self._emit("progress")
                    last_emit = time.time()
                time.sleep(self.poll_s)
        finally:
            self.stop()
        if self.chunk is None:  # a Slurm array task leaves tidying to the submitter: other tasks may run
            self.ledger.tidy(self.spec)
        self._emit("progress")

