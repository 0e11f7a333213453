"""Training entry point: ``train(cfg, run_dir, ...)`` (the CLI's ``medpipe train``), alone or under torchrun.

The loop lives in :mod:`medpipe.training`; this module keeps the public names: :func:`train`,
:class:`TrainEvent`, :class:`TrainResult`, :class:`Trainer`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medpipe.config import PipelineConfig
from medpipe.datasets import FORMATS
from medpipe.errors import CheckpointError, ConfigError
from medpipe.io.atomic import ensure_writable_dir
from medpipe.runtime import device_reason, resolve_device
from medpipe.training.distributed import init_distributed, shutdown
from medpipe.training.events import EpochStats, TrainEvent, TrainResult
from medpipe.training.state import resumable, resume_key
from medpipe.training.trainer import Trainer

__all__ = ["EpochStats", "TrainEvent", "TrainResult", "Trainer", "resume_key", "train"]


#: ``--smoke``: iterations of the one epoch a smoke run trains.
SMOKE_ITERATIONS = 3


def smoke_config(cfg: PipelineConfig) -> PipelineConfig:
    """``--smoke``: the same data, model and preprocessing, but one epoch of a few iterations, the smallest patch
    the network takes (at least 32 voxels), no cache, a hold-out split with one validation case; a check of the
    data and setup that finishes on a CPU in minutes, not a model."""
    total = 1
    for s in cfg.model.strides:
        total *= max(s) if isinstance(s, list | tuple) else int(s)
    side = max(32, total)
    patch = (side, side, side)
    return cfg.with_overrides(
        data={"fold": -1, "val_fraction": 0.01},
        transforms={"patch_size_vox": patch, "samples_per_case": 1},
        training={"epochs": 1, "iterations_per_epoch": SMOKE_ITERATIONS, "batch_size": 1, "val_every": 1,
                  "cache": False, "cache_dir": "", "num_workers": 0},
        inference={"roi_size_vox": patch, "sw_batch_size": 1, "overlap": 0.0},
    )


def apply_overrides(cfg: PipelineConfig, *, data_root: Path | None = None, epochs: int | None = None,
                    fold: int | None = None, fmt: str | None = None, smoke: bool = False) -> PipelineConfig:
    """CLI flags over the YAML: ``--data``, ``--epochs``, ``--fold``, ``--format`` (checked here)."""
    data: dict[str, object] = {}
    if data_root is not None:
        data["root"] = str(Path(data_root).resolve())
    if fmt is not None:
        if fmt not in ("auto", *FORMATS):
            raise ConfigError(f"--format {fmt}: unknown layout", hint="one of auto, " + ", ".join(FORMATS))
        data["format"] = fmt
    if fold is not None:
        n = cfg.data.n_folds
        if not -1 <= fold < n:
            raise ConfigError(f"--fold {fold}: the config has {n} folds (data.n_folds), numbered 0-{n - 1}",
                              hint=f"pass --fold between 0 and {n - 1}, or -1 for a hold-out split")
        data["fold"] = fold
    cfg = cfg.with_overrides(data=data)
    if smoke:
        cfg = smoke_config(cfg)
    if epochs is not None:
        cfg = cfg.with_overrides(training={"epochs": epochs})
    return cfg


def train(cfg: PipelineConfig, run_dir: Path, *, data_root: Path | None = None, epochs: int | None = None,
          device: str = "auto", resume: bool = False, force: bool = False, fold: int | None = None,
          fmt: str | None = None, on_event: Callable[[TrainEvent], None] | None = None,
          smoke: bool = False) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (CLI flags override the YAML: ``data_root``, ``epochs``, ``fold``, ``fmt``).

    Under ``torchrun`` every process calls this with the same arguments: it joins the process group, trains
    its share of each batch, and only rank 0 writes the run folder and reports ``on_event``.
    """
    cfg = apply_overrides(cfg, data_root=data_root, epochs=epochs, fold=fold, fmt=fmt, smoke=smoke)
    run_dir = Path(run_dir)
    if resume and not resumable(run_dir):
        raise CheckpointError("nothing to resume: no last.pt in the run folder", path=run_dir)
    if not resume and resumable(run_dir):
        raise CheckpointError("run folder already holds a training run", path=run_dir,
                              hint="pass --resume to continue it, or choose a new --out")
    requested = device
    dist, device = init_distributed(resolve_device(device))
    try:
        ensure_writable_dir(run_dir)
        trainer = Trainer(cfg, run_dir, device, dist, on_event)
        trainer.notices.append(device_reason(requested, device))
        return trainer.run(resume=resume, force=force)
    finally:
        shutdown()
