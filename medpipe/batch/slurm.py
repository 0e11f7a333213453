"""The Slurm launcher: submitit job arrays, one array task per chunk of cases.

Each array task runs the local launcher with one worker on its chunk (so crash isolation, retries and the case
timeout work the same as on one machine); Slurm gives the task its GPU through ``--gpus-per-task``. Tasks are
requeue-safe because every case is an idempotent unit in the ledger: a requeued or rerun task skips what is done
and takes over cases whose lease expired.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpipe.batch.ledger import Ledger
from medpipe.batch.status import BatchEvent, quick_counts
from medpipe.errors import ConfigError


@dataclass(frozen=True)
class SlurmOptions:
    """sbatch settings of the array (``extra``: more ``#SBATCH --key=value`` lines, e.g. account, qos)."""

    partition: str | None = None
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    array_parallelism: int = 64
    time_min: int = 240
    extra: dict[str, str] = field(default_factory=dict)
    python: str | None = None  # how array tasks start Python, e.g. "apptainer exec --nv medpipe.sif python"


class ChunkTask:
    """What one array task runs: the local launcher with one worker on chunk ``k`` of the batch in ``out``."""

    def __init__(self, out: str) -> None:
        self.out = out

    def __call__(self, chunk: int) -> dict[str, int]:
        from medpipe.batch.local import LocalLauncher

        launcher = LocalLauncher(Path(self.out), workers=1, chunk=chunk)
        launcher.run()
        counts = quick_counts(launcher.ledger, launcher.cases)
        return {"done": counts.done, "failed": counts.failed, "total": counts.total}

    def checkpoint(self, chunk: int) -> Any:
        """On preemption or time limit submitit requeues the task; the ledger makes that safe."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, chunk)


def require_slurm() -> None:
    if importlib.util.find_spec("submitit") is None:
        raise ConfigError("--launcher slurm needs the submitit package", hint="pip install submitit")
    if shutil.which("sbatch") is None:
        raise ConfigError("--launcher slurm needs Slurm's sbatch on PATH", hint="run on a Slurm login node, or use "
                          "--launcher local")


def submit(out: Path, n_chunks: int, options: SlurmOptions) -> list[str]:
    """Submit one job array of ``n_chunks`` tasks; returns the array's job ids (``<id>_<k>``)."""
    import submitit

    ledger = Ledger(out)
    executor = submitit.SlurmExecutor(folder=ledger.logs / "slurm" / "%j", max_num_timeout=3, python=options.python)
    params: dict[str, Any] = {"time": options.time_min, "array_parallelism": options.array_parallelism,
                              "job_name": "medpipe-batch", "ntasks_per_node": 1}
    if options.partition:
        params["partition"] = options.partition
    if options.gpus_per_task:
        params["gpus_per_task"] = options.gpus_per_task
    if options.cpus_per_task:
        params["cpus_per_task"] = options.cpus_per_task
    if options.mem_gb:
        params["mem"] = f"{int(options.mem_gb * 1024)}M"
    if options.extra:
        params["additional_parameters"] = dict(options.extra)
    executor.update_parameters(**params)
    jobs = executor.map_array(ChunkTask(str(out)), list(range(n_chunks)))
    return [str(j.job_id) for j in jobs]


def queued(job_ids: list[str]) -> int:
    """How many of the array's tasks Slurm still lists (pending or running); -1 if squeue cannot say."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        res = subprocess.run(["squeue", "--noheader", "--format=%i", f"--jobs={','.join(arrays)}"],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return -1
    if res.returncode != 0:
        return 0 if "Invalid job id" in res.stderr else -1
    return len([line for line in res.stdout.splitlines() if line.strip()])


def wait(out: Path, job_ids: list[str], on_event: Callable[[BatchEvent], None] | None = None,
         poll_s: float = 2.0) -> None:
    """Wait until every case is done or failed, or until Slurm no longer lists any task of the array."""
    ledger = Ledger(out)
    cases = ledger.read_cases()
    gone_since: float | None = None
    while True:
        counts = quick_counts(ledger, cases)
        if on_event:
            on_event(BatchEvent("progress", "", counts))
        if counts.done + counts.failed >= counts.total:
            return
        if queued(job_ids) == 0:
            gone_since = gone_since or time.time()
            if time.time() - gone_since > 3 * poll_s:  # let the last commits land
                return
        else:
            gone_since = None
        time.sleep(poll_s)
