"""``medpipe batch``: prepare the ledger, then run the cases with the local or the Slurm launcher."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpipe.batch import slurm as slurm_launcher
from medpipe.batch.adapter import check_formats, identity, open_predictor
from medpipe.batch.ledger import Ledger
from medpipe.batch.manifest import cases_from_inputs, load_manifest
from medpipe.batch.records import BatchCase, BatchSpec
from medpipe.batch.report import write_report
from medpipe.batch.slurm import SlurmOptions, require_slurm
from medpipe.batch.status import BatchEvent, BatchStatus, Counts
from medpipe.errors import ConfigError, InputError, OutputError
from medpipe.io.atomic import ensure_writable_dir

#: Space a finished case needs besides its mask (sidecar, ledger records, staging), and mask size per input byte.
CASE_OVERHEAD_BYTES = 64 * 1024
MASK_BYTES_PER_INPUT_BYTE = 0.25


@dataclass(frozen=True)
class BatchResult:
    """What ``run_batch`` did: the status at the end (None when detached) and the Slurm array's job ids."""

    n_cases: int
    n_to_run: int
    status: BatchStatus | None = None
    job_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status.counts.done == self.status.counts.total


def parse_gpus(gpus: str | None) -> list[str] | None:
    """``all`` -> every visible CUDA device; ``0,1`` -> those; None -> CPU workers."""
    if gpus is None:
        return None
    if gpus == "all":
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise ConfigError("--gpus all: no CUDA device is visible", hint="use --workers N for CPU workers")
        return [str(i) for i in range(n)]
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise ConfigError(f"--gpus {gpus!r}: expected all or a list like 0,1")
    return ids


def check_free_space(out: Path, cases: list[BatchCase]) -> None:
    """Refuse to start when the output file system cannot hold the results (estimate) or a small write fails."""
    need = CASE_OVERHEAD_BYTES * len(cases) + 1024 * 1024
    for c in cases:
        need += int(MASK_BYTES_PER_INPUT_BYTE * sum(_size(Path(f)) for f in c.files))
    st = os.statvfs(out)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise OutputError(f"disk full: {free / 1e6:.1f} MB free where the batch needs about {need / 1e6:.1f} MB for "
                          f"{len(cases)} case(s)", path=out, hint="free space or choose another -o folder")
    probe = out / f".medpipe-space-probe-{os.getpid()}"
    try:
        with probe.open("wb") as fh:
            fh.write(b"\0" * CASE_OVERHEAD_BYTES)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        reason = "disk full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        raise OutputError(f"cannot write to the output folder: {reason}", path=out) from err
    finally:
        probe.unlink(missing_ok=True)


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def run_batch(model: Path, inputs: list[Path], out: Path, *, manifest: Path | None = None, workers: int = 1,
              gpus: str | None = None, launcher: str = "local", chunk: int = 50,
              slurm: SlurmOptions | None = None, detach: bool = False, case_timeout_s: float | None = None,
              lease_s: float = 60.0, infer_options: dict[str, Any] | None = None,
              on_event: Callable[[BatchEvent], None] | None = None) -> BatchResult:
    """Segment every case into ``out/predictions`` with ``out`` as the ledger; a rerun computes only what is not
    done (failed cases are tried again). Raises before any inference when ``out`` cannot be written."""
    if launcher not in ("local", "slurm"):
        raise ConfigError(f"unknown launcher {launcher!r}", hint="use local or slurm")
    if not inputs and manifest is None:
        raise InputError("no inputs: give files/folders or --manifest")
    if gpus is not None and workers != 1:
        raise ConfigError(f"--workers {workers} and --gpus {gpus} both given: --gpus starts one worker per GPU",
                          hint="give one of them (--workers for CPU workers)")
    ensure_writable_dir(out)
    ledger = Ledger(out)
    ledger.create()
    options = dict(infer_options or {})
    if options.get("models"):  # workers may start elsewhere (Slurm): absolute paths
        options["models"] = [str(Path(m).resolve()) for m in options["models"]]
    slots = parse_gpus(gpus) if launcher == "local" else None
    if slots:
        options["device"] = "cuda"
    if launcher == "slurm":
        require_slurm()
    ident = identity(open_predictor(model, options, device="cpu"))
    cases = load_manifest(manifest, ident.channels) if manifest else []
    if inputs:
        cases += cases_from_inputs(inputs, ident.channels)
    if not cases:
        raise InputError("no input images found", path=", ".join(str(p) for p in inputs))
    check_formats(cases, options)
    spec = BatchSpec(str(model.resolve()), ident.checkpoint, ident.model_sha256, ident.config_hash, options,
                     lease_s, case_timeout_s, 2, time.time(), launcher)
    todo = []
    for c in cases:
        if ledger.is_done(c, spec, check_input=True):
            continue
        if ledger.is_done(c, spec):  # done, but from an input that has changed since: not done any more
            ledger.invalidate(c.case_id)
        todo.append(c)
    check_free_space(out, todo)
    ledger.clear_failures({c.case_id for c in cases})
    ledger.tidy(spec)
    chunks = [[c.case_id for c in todo[i:i + chunk]] for i in range(0, len(todo), max(1, chunk))]
    ledger.write_spec(spec, cases, chunks)
    if launcher == "local":
        from medpipe.batch.local import LocalLauncher

        LocalLauncher(out, workers=workers, gpus=slots, on_event=on_event).run()
        return BatchResult(len(cases), len(todo), write_report(out))

    job_ids = slurm_launcher.submit(out, len(chunks), slurm or SlurmOptions()) if chunks else []
    if on_event:
        on_event(BatchEvent("submitted", f"{len(chunks)} array task(s): {', '.join(job_ids[:1])}...",
                            Counts(len(cases), len(cases) - len(todo), 0, 0)))
    if detach:
        return BatchResult(len(cases), len(todo), None, job_ids)
    if job_ids:
        slurm_launcher.wait(out, job_ids, on_event)
        ledger.tidy(spec)
    return BatchResult(len(cases), len(todo), write_report(out), job_ids)
