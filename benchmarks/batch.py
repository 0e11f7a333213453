"""Batch throughput: `medpipe batch` with 1 and 2 local CPU workers, and through Slurm job arrays, against the same
cases run with `medpipe infer` (one process, one case after another).

Every runner is a fresh command (start-up, model load and all), timed from the moment it is started:
- submit -> first case: start-up and scheduling before the first mask is in place;
- first -> last case: the steady state; cases/hour (steady) = (N - 1) / (last - first);
- cases/hour (wall) = N / wall time, the figure a user sees.
Slurm (``--slurm``) starts the one-node test cluster of ``tests/services/slurm.py`` (root, slurm-wlm + munge).

    python benchmarks/batch.py [--cases 24] [--shape 64,64,32] [--slurm] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.batch_cases import tiny_cases, tiny_checkpoint  # noqa: E402


def _medpipe(*args: str, env: dict[str, str]) -> float:
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "medpipe.cli", *args], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"medpipe {' '.join(args[:1])} failed:\n{res.stdout}\n{res.stderr}")
    return t0


def _finish_times(out: Path, ledger: bool) -> list[float]:
    if ledger:
        return sorted(json.loads(p.read_text())["finished_at"] for p in (out / "ledger" / "done").glob("*.json"))
    return sorted(p.stat().st_mtime for p in out.glob("*.json"))


def measure(name: str, args: list[str], out: Path, n: int, env: dict[str, str], ledger: bool = True) -> dict:
    t0 = _medpipe(*args, env=env)
    wall = time.time() - t0
    times = _finish_times(out, ledger)
    if len(times) != n:
        raise SystemExit(f"{name}: {len(times)} of {n} cases finished")
    steady = (n - 1) / (times[-1] - times[0]) * 3600 if n > 1 and times[-1] > times[0] else float("nan")
    return {"runner": name, "wall_s": wall, "submit_to_first_s": times[0] - t0, "first_to_last_s": times[-1] - times[0],
            "cases_per_hour_wall": n / wall * 3600, "cases_per_hour_steady": steady}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--shape", default="64,64,32")
    ap.add_argument("--slurm", action="store_true", help="also run through a local one-node Slurm cluster")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="medpipe-batch-bench-") as tmp:
        root = Path(tmp)
        model = tiny_checkpoint(root / "model")
        cases = tiny_cases(root / "in", args.cases, shape)  # type: ignore[arg-type]
        common = ["--device", "cpu"]
        rows.append(measure("medpipe infer (1 process)", ["infer", str(model), str(cases), "-o", str(root / "infer"),
                                                          *common], root / "infer", args.cases, env, ledger=False))
        for w in (1, 2):
            out = root / f"batch{w}"
            rows.append(measure(f"medpipe batch --workers {w}", ["batch", str(model), str(cases), "-o", str(out),
                                                                 "--workers", str(w), *common], out, args.cases, env))
        if args.slurm:
            from tests.services.slurm import running_cluster, slurm_missing

            why = slurm_missing()
            if why:
                print(f"Slurm skipped: {why}")
            else:
                with running_cluster(root / "slurm") as cluster, contextlib.ExitStack():
                    senv = {**env, "SLURM_CONF": str(cluster.conf)}
                    out = root / "slurm-out"
                    chunk = str(max(1, args.cases // 2))
                    rows.append(measure(f"medpipe batch --launcher slurm (2 tasks x {chunk})",
                                        ["batch", str(model), str(cases), "-o", str(out), "--launcher", "slurm",
                                         "--chunk", chunk, "--slurm-cpus-per-task", "1", *common], out, args.cases,
                                        senv))
    base = rows[0]["wall_s"]
    print(f"\n{args.cases} cases of {args.shape} voxels, tiny 3D U-Net, CPU, {os.cpu_count()} cores\n")
    print("| runner | wall (s) | submit → first case (s) | first → last case (s) | cases/hour (wall) | "
          "cases/hour (steady) | wall vs infer |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['runner']} | {r['wall_s']:.1f} | {r['submit_to_first_s']:.1f} | {r['first_to_last_s']:.1f} | "
              f"{r['cases_per_hour_wall']:.0f} | {r['cases_per_hour_steady']:.0f} | {base / r['wall_s']:.2f}× |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
