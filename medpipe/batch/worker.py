"""A batch worker process: load the model once, then claim, segment and commit cases until none is left.

Started by a launcher as ``python -m medpipe.batch.worker OUT WORKER_ID [--chunk K]``. It never prints; what goes
wrong lands in the ledger (and, for the unexpected, on stderr, which the launcher sends to ``OUT/logs/``).

Cases run through the predictor's pipelined loop (:func:`medpipe.inference.pipeline.run_pipelined`): while the
network runs case k, a reader thread claims, reads and preprocesses case k+1 and a writer thread exports, writes
and commits case k-1. A claim is ``running`` while its case is read, in the network or written, and ``queued``
while it waits between two stages, so that a worker's death is blamed on the cases it was working on, not on one
it was holding in reserve (see :class:`medpipe.batch.local.LocalLauncher`). A retry (attempt 2) runs alone: the worker
lets the pipeline drain first and takes nothing else until it is through, so that a second death is certainly the
case's own before it is failed. A thread renews the lease of every claim held and ends the process if its
launcher is gone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from medpipe.batch.adapter import Job, open_predictor, read_case, run_network, write_outputs
from medpipe.batch.ledger import Ledger
from medpipe.batch.records import BatchCase, BatchSpec, Claim
from medpipe.errors import MedpipeError
from medpipe.inference.pipeline import Finished, run_pipelined
from medpipe.io.atomic import write_text_atomic

#: Cases waiting between two stages of a worker's pipeline (each one a claim held in reserve).
QUEUE_SIZE = 1


class LeaseKeeper(threading.Thread):
    """Touch the locks held every ``lease_s / 4`` seconds; exit the process when the parent (launcher) died."""

    def __init__(self, ledger: Ledger, lease_s: float) -> None:
        super().__init__(daemon=True)
        self.ledger, self.period = ledger, max(0.2, lease_s / 4)
        self._claims: dict[str, Claim] = {}
        self._lost: set[str] = set()
        self._mutex = threading.Lock()
        self.parent = os.getppid()
        self._halt = threading.Event()

    def hold(self, claim: Claim) -> None:
        with self._mutex:
            self._claims[claim.case_id] = claim

    def drop(self, claim: Claim) -> None:
        with self._mutex:
            self._claims.pop(claim.case_id, None)
            self._lost.discard(claim.token)

    def lost(self, claim: Claim) -> bool:
        with self._mutex:
            return claim.token in self._lost

    def run(self) -> None:
        while not self._halt.wait(self.period):
            if os.getppid() != self.parent:
                os._exit(3)  # orphaned: the launcher was killed; the lease lapses and the case is reclaimed
            with self._mutex:
                held = list(self._claims.values())
            for claim in held:
                if not self.ledger.renew(claim):
                    with self._mutex:
                        self._lost.add(claim.token)

    def stop(self) -> None:
        self._halt.set()


def _order(cases: list[BatchCase], worker: str) -> list[BatchCase]:
    """Start each worker at a different place in the list so that they rarely race for the same case."""
    if not cases:
        return cases
    start = sum(map(ord, worker)) * 7919 % len(cases)
    return cases[start:] + cases[:start]


class _Pass:
    """One pass over the worker's cases through the pipeline: the three stages and what they share."""

    def __init__(self, ledger: Ledger, spec: BatchSpec, predictor: Any, worker: str, keeper: LeaseKeeper,
                 settled: set[str]) -> None:
        self.ledger, self.spec, self.predictor, self.worker = ledger, spec, predictor, worker
        self.keeper, self.settled = keeper, settled
        self.claimed = 0
        self._idle = threading.Condition()
        self._in_flight = 0  # claimed cases not yet written (or failed)
        self._solo = False  # a retry is in flight: take nothing else until it is through
        self._aborted = False

    def _wait_idle(self) -> bool:
        """Wait until no case of this pass is in flight; False when the pipeline was aborted (a bug)."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0 or self._aborted)
            return not self._aborted

    def abort(self) -> None:
        with self._idle:
            self._aborted = True
            self._idle.notify_all()

    def read(self, case: BatchCase) -> Job | Finished[None]:
        cid, ledger = case.case_id, self.ledger
        if cid in self.settled or self._aborted:
            return Finished(None)
        if self._solo and not self._wait_idle():
            return Finished(None)
        self._solo = False
        if ledger.failure(cid) or ledger.is_done(case, self.spec, check_input=True):
            self.settled.add(cid)
            return Finished(None)
        claim = ledger.claim(cid, self.worker, self.spec, state="queued")
        if claim is None:
            return Finished(None)
        if ledger.failure(cid) or ledger.is_done(case, self.spec):
            # another worker finished it between the look above and the claim (it commits, then releases): only a
            # check made while holding the lock can tell
            ledger.release(claim)
            self.settled.add(cid)
            return Finished(None)
        self.keeper.hold(claim)
        if claim.attempt > 1:  # a retry runs alone, so that a second death is certainly its own
            if not self._wait_idle():
                return Finished(None)
            self._solo = True
        self.claimed += 1
        with self._idle:
            self._in_flight += 1
        job = Job(claim, case, ledger.staging_dir_for(claim))
        if not self._state(job, "running"):  # reading counts: a huge input can take the worker down too
            return job
        job = read_case(self.predictor, job, self.spec.infer_options)
        self._state(job, "queued")  # waiting for the network: a death now is not this case's doing
        return job

    def _state(self, job: Job, state: str) -> bool:
        claim = self.ledger.set_state(job.claim, state)
        if claim is None:
            job.lost, job.error = True, "the claim was taken over"
            return False
        job.claim = claim
        self.keeper.hold(claim)
        return True

    def compute(self, job: Job) -> Job:
        try:
            if job.lost or not self._state(job, "running"):  # a death of this worker counts against the case again
                return job
            return run_network(self.predictor, job)
        except BaseException:
            self.abort()
            raise

    def write(self, job: Job) -> None:
        try:
            job = write_outputs(self.predictor, job, self.spec.infer_options)
            if job.lost or self.keeper.lost(job.claim):
                return  # someone took the case over after our lease lapsed: their result counts, ours is dropped
            if job.error:
                self.ledger.fail(job.claim, "error", job.error)
            else:
                self.ledger.commit(job.claim, job.folder, job.case)
        except BaseException:
            self.abort()
            raise
        finally:
            self.keeper.drop(job.claim)
            shutil.rmtree(job.folder, ignore_errors=True)
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()


def run_worker(out: Path, worker: str, chunk: int | None = None) -> int:
    """Process claimable cases until a whole pass claims nothing; returns the number of cases attempted."""
    ledger = Ledger(out)
    spec: BatchSpec = ledger.read_spec()
    cases = _order(ledger.read_cases(chunk), worker)
    predictor = open_predictor(Path(spec.model), spec.infer_options)
    keeper = LeaseKeeper(ledger, spec.lease_s)
    keeper.start()
    attempted = 0
    settled: set[str] = set()  # done or failed: not looked at again
    try:
        while True:
            one = _Pass(ledger, spec, predictor, worker, keeper, settled)
            run_pipelined(cases, one.read, one.compute, one.write, queue_size=QUEUE_SIZE)
            attempted += one.claimed
            if not one.claimed:
                return attempted
    finally:
        keeper.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medpipe.batch.worker")
    parser.add_argument("out", type=Path)
    parser.add_argument("worker")
    parser.add_argument("--chunk", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        run_worker(args.out, args.worker, args.chunk)
    except MedpipeError as err:  # the model or the ledger is unusable: say so where the launcher looks, stop
        write_text_atomic(Ledger(args.out).logs / f"{args.worker}.error", f"{err}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
