"""What a training run reports while it runs (rendered by the CLI) and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TrainEvent:
    """Progress reported to the caller (the CLI renders it). Only rank 0 of a DDP job reports."""

    kind: str  # "start" | "notice" | "check" (pre-flight of case ``step`` of ``steps``) | "phase" (work before
    #            the first step, e.g. caching) | "cache" (case ``step`` of ``steps`` cached) | "step" |
    #            "val_case" (validation case ``step`` of ``steps`` done) | "epoch" | "validation" | "done"
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    loss: float | None = None
    dice: dict[str, float] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class EpochStats:
    """One epoch on this rank: mean loss, optimiser steps, seconds waiting for batches and seconds in the model
    (forward, backward, optimiser step; synchronised on CUDA)."""

    loss: float
    steps: int
    data_wait_s: float
    compute_s: float

    @property
    def compute_fraction(self) -> float:
        total = self.data_wait_s + self.compute_s
        return self.compute_s / total if total > 0 else float("nan")


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: int
    best_dice: float
    last_dice: dict[str, float]
