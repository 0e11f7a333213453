"""A process that claims and commits cases as fast as it can, with the real ledger and no inference (for the
contention test): ``python -m tests.batch_hammer OUT WORKER N LOG``. Imports no torch, so it starts at once."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from medpipe.batch.ledger import Ledger
from medpipe.batch.records import BatchSpec


def hammer(out: Path, worker: str, n: int, log: Path, start_at: float) -> None:
    ledger = Ledger(out)
    spec = BatchSpec("m", "m/best.pt", "a" * 64, "cfg", {}, 60.0, None, 2, time.time())
    ids = [f"c{i:03d}" for i in range(n)]
    while time.time() < start_at:  # both processes start claiming at the same instant
        time.sleep(0.001)
    mine = []
    for _ in range(2):
        for cid in ids if worker == "w1" else list(reversed(ids))[n // 3:] + list(reversed(ids))[: n // 3]:
            if (ledger.predictions / f"{cid}.json").exists():
                continue
            claim = ledger.claim(cid, worker, spec)
            if claim is None:
                continue
            if (ledger.predictions / f"{cid}.json").exists():  # finished by the rival since the look above: the
                ledger.release(claim)                           # check that counts is the one made holding the lock
                continue
            with ledger.staging_dir(claim) as staged:
                (staged / f"{cid}.nii.gz").write_bytes(b"mask")
                (staged / f"{cid}.json").write_text(json.dumps({"case": cid, "worker": worker}))
                if ledger.commit(claim, staged):
                    mine.append(cid)
    log.write_text("\n".join(mine))


if __name__ == "__main__":
    hammer(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), float(sys.argv[5]))
