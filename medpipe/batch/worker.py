"""A batch worker process: load the model once, then claim, segment and commit cases until none is left.

Started by a launcher as ``python -m medpipe.batch.worker OUT WORKER_ID [--chunk K]``. It never prints; what goes
wrong lands in the ledger (and, for the unexpected, on stderr, which the launcher sends to ``OUT/logs/``).
A thread renews the lease of the case in hand and ends the process if its launcher is gone.
"""

from __future__ import annotations

import argparse
import os
import threading
from pathlib import Path

from medpipe.batch.adapter import open_predictor, segment_case
from medpipe.batch.ledger import Ledger
from medpipe.batch.records import BatchCase, BatchSpec, Claim
from medpipe.errors import MedpipeError
from medpipe.io.atomic import write_text_atomic


class LeaseKeeper(threading.Thread):
    """Touch the held lock every ``lease_s / 4`` seconds; exit the process when the parent (launcher) died."""

    def __init__(self, ledger: Ledger, lease_s: float) -> None:
        super().__init__(daemon=True)
        self.ledger, self.period = ledger, max(0.2, lease_s / 4)
        self.claim: Claim | None = None
        self.lost = False
        self.parent = os.getppid()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.period):
            if os.getppid() != self.parent:
                os._exit(3)  # orphaned: the launcher was killed; the lease lapses and the case is reclaimed
            held = self.claim
            if held is not None and not self.ledger.renew(held):
                self.lost = True

    def stop(self) -> None:
        self._halt.set()


def _order(cases: list[BatchCase], worker: str) -> list[BatchCase]:
    """Start each worker at a different place in the list so that they rarely race for the same case."""
    if not cases:
        return cases
    start = sum(map(ord, worker)) * 7919 % len(cases)
    return cases[start:] + cases[:start]


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
            claimed = 0
            for case in cases:
                if case.case_id in settled:
                    continue
                if ledger.failure(case.case_id) or ledger.is_done(case, spec, check_input=True):
                    settled.add(case.case_id)
                    continue
                claim = ledger.claim(case.case_id, worker, spec)
                if claim is None:
                    continue
                if ledger.failure(case.case_id) or ledger.is_done(case, spec):
                    # another worker finished it between the look above and the claim (it commits, then releases):
                    # only a check made while holding the lock can tell
                    ledger.release(claim)
                    settled.add(case.case_id)
                    continue
                claimed += 1
                keeper.claim, keeper.lost = claim, False
                _process(ledger, predictor, case, claim, spec, keeper)
                keeper.claim = None
            attempted += claimed
            if not claimed:
                return attempted
    finally:
        keeper.stop()


def _process(ledger: Ledger, predictor: object, case: BatchCase, claim: Claim, spec: BatchSpec,
             keeper: LeaseKeeper) -> None:
    with ledger.staging_dir(claim) as staged:
        ok, error = segment_case(predictor, case, staged, spec.infer_options)
        if keeper.lost:
            return  # someone took the case over after our lease lapsed: their result counts, ours is dropped
        if ok:
            ledger.commit(claim, staged, case)
        else:
            ledger.fail(claim, "error", error)


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
