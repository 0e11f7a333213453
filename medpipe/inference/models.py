"""The model set a predictor runs: one checkpoint, the folds of a cross-validation run, or several run folders.

:func:`load_model_set` dispatches on what the path is, so that another source (a model package) is one more
branch there:

- a checkpoint file (``*.pt``): one model;
- a run folder with ``best.pt`` (else ``last.pt``): one model;
- a folder of ``fold_*/`` run folders (``medpipe train --fold K --out DIR/fold_K``): one model per fold, sorted by
  fold number; ``folds`` picks some;
- a list of any of these: all their models, in order.

Every model must agree with the first on what the ensemble averages: labels, regions, input channels, the
preprocessing (``transforms`` minus training-only sampling fields) and the network's output channels. Each model
keeps its own network; the first model's config drives preprocessing and sliding window.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medpipe.config import PipelineConfig
from medpipe.errors import CheckpointError
from medpipe.inference.sidecar import MemberRef
from medpipe.models.checkpoint import load_checkpoint, model_from_loaded
from medpipe.models.package import is_package, load_package_models
from medpipe.models.trainrange import TrainingRange
from medpipe.runtime import sha256_file

#: Preprocessing fields that every member of an ensemble must share (they decide the network grid).
_SHARED_TRANSFORMS = ("orientation", "spacing_mm", "intensity", "hu_window", "crop_foreground")
_FOLD_DIR = re.compile(r"^fold_(\d+)$")


@dataclass(frozen=True)
class LoadedModel:
    """One member of a model set: its network (eval mode, on the device), config, checkpoint and provenance."""

    network: nn.Module
    cfg: PipelineConfig
    checkpoint: Path
    sha256: str
    fold: int | None
    #: Per-label foreground volume range seen in training, ``{"1": [min_ml, max_ml]}`` (empty if not recorded).
    label_volumes_ml: dict[str, list[float]] = field(default_factory=dict)
    #: Spacing and intensity range of the training data (None for packages and older checkpoints).
    training_range: TrainingRange | None = None

    def describe(self) -> MemberRef:
        return MemberRef(self.checkpoint.name, self.sha256, self.fold, self.cfg.model.arch)


@dataclass(frozen=True)
class ModelSet:
    """The models of an ensemble; ``cfg`` is the first model's config."""

    models: tuple[LoadedModel, ...]
    #: The package's manifest sha256 when the set came from one package (its identity for resume).
    package_sha256: str | None = None

    @property
    def cfg(self) -> PipelineConfig:
        return self.models[0].cfg

    @property
    def folds(self) -> list[int | None]:
        return [m.fold for m in self.models]

    @property
    def sha256(self) -> str:
        """The checkpoint's sha256 for one model; for several, the sha256 of their sha256s in order."""
        if self.package_sha256 is not None:
            return self.package_sha256
        if len(self.models) == 1:
            return self.models[0].sha256
        return hashlib.sha256("".join(m.sha256 for m in self.models).encode()).hexdigest()

    def volume_ranges(self) -> dict[int, tuple[float, float]]:
        """Per-label training volume range over all models (the widest), in ml."""
        out: dict[int, tuple[float, float]] = {}
        for m in self.models:
            for key, (lo, hi) in m.label_volumes_ml.items():
                old = out.get(int(key))
                out[int(key)] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
        return out


def find_checkpoint(run: Path) -> Path:
    """A run folder's ``best.pt`` (else ``last.pt``), a checkpoint file or a package given directly."""
    if run.is_file() or is_package(run):
        return run
    if not run.is_dir():
        raise CheckpointError("run folder or checkpoint not found", path=run)
    for name in ("best.pt", "last.pt"):
        if (run / name).is_file():
            return run / name
    raise CheckpointError("run folder has no checkpoint (best.pt or last.pt)", path=run,
                          hint="train first, or pass a folder of fold_*/ run folders")


def fold_dirs(run: Path) -> dict[int, Path]:
    """``{fold: folder}`` of a cross-validation folder's ``fold_K/`` subfolders (empty when there are none)."""
    if not run.is_dir():
        return {}
    found = {int(m.group(1)): p for p in run.iterdir() if p.is_dir() and (m := _FOLD_DIR.match(p.name))}
    return dict(sorted(found.items()))


def checkpoints_of(path: Path, folds: Sequence[int] | None = None) -> list[tuple[Path, int | None]]:
    """The (checkpoint, fold) pairs ``path`` stands for (see the module docstring)."""
    path = Path(path)
    if path.is_dir() and not (path / "best.pt").is_file() and not (path / "last.pt").is_file():
        by_fold = fold_dirs(path)
        if by_fold:
            wanted = list(by_fold) if folds is None else list(folds)
            missing = [f for f in wanted if f not in by_fold]
            if missing:
                raise CheckpointError(f"--folds {' '.join(map(str, missing))}: no such fold folder (found "
                                      f"{', '.join(f'fold_{k}' for k in by_fold)})", path=path)
            return [(find_checkpoint(by_fold[f]), f) for f in wanted]
    if folds is not None:
        raise CheckpointError("--folds needs a folder of fold_*/ run folders", path=path,
                              hint="pass the folder that holds fold_0/, fold_1/, ...")
    return [(find_checkpoint(path), None)]


def load_model(path: Path, device: str, fold: int | None = None) -> LoadedModel:
    """One checkpoint, rebuilt and loaded strictly (``torch.load(weights_only=True)``)."""
    ckpt = load_checkpoint(path)
    network, cfg = model_from_loaded(ckpt, path, device)
    if fold is None and cfg.data.fold >= 0:
        fold = cfg.data.fold
    volumes = ckpt.get("label_volumes_ml") or {}
    return LoadedModel(network, cfg, Path(path), sha256_file(path), fold,
                       {str(k): [float(v[0]), float(v[1])] for k, v in volumes.items()},
                       TrainingRange.from_json(ckpt.get("training_range", {})))


def load_model_set(path: Path | Sequence[Path], folds: Sequence[int] | None = None,
                   device: str | torch.device = "cpu", engine: str = "torch") -> ModelSet:
    """Load every model ``path`` stands for (one path or several) onto ``device``; check they can be averaged.
    A medpipe package (``.zip`` or folder) is one set of folds; ``engine`` onnxruntime needs a package with ONNX
    files."""
    paths = [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]
    if not paths:
        raise CheckpointError("no model given")
    if len(paths) == 1 and is_package(paths[0]):
        nets, cfg, sha = load_package_models(paths[0], str(device), engine)
        members = tuple(LoadedModel(n, cfg, paths[0], sha, i) for i, n in enumerate(nets))
        chosen = members if folds is None else tuple(m for m in members if m.fold in set(folds))
        if not chosen:
            raise CheckpointError(f"--folds {' '.join(map(str, folds or []))}: the package has folds "
                                  f"{', '.join(str(m.fold) for m in members)}", path=paths[0])
        return ModelSet(chosen, package_sha256=sha)
    if engine != "torch":
        raise CheckpointError(f"--engine {engine} needs a package with ONNX files", path=paths[0],
                              hint="medpipe package RUN_DIR --onnx -o model.zip")
    pairs = [pair for p in paths for pair in checkpoints_of(p, folds)]
    models = tuple(load_model(ckpt, str(device), fold) for ckpt, fold in pairs)
    first = models[0]
    for m in models[1:]:
        _check_compatible(first, m)
    return ModelSet(models)


def _check_compatible(first: LoadedModel, other: LoadedModel) -> None:
    a, b = first.cfg, other.cfg
    checks: list[tuple[str, Any, Any]] = [
        ("labels", a.labels, b.labels), ("regions", a.regions, b.regions), ("channels", a.channels, b.channels),
        ("task", a.task, b.task), ("classes", a.classes, b.classes),
        *[(f"transforms.{k}", getattr(a.transforms, k), getattr(b.transforms, k)) for k in _SHARED_TRANSFORMS],
    ]
    for key, x, y in checks:
        if x != y:
            raise CheckpointError(f"cannot ensemble with {first.checkpoint}: '{key}' differs ({y!r} here, {x!r} "
                                  "there)", path=other.checkpoint, hint="ensemble only models of one task and plan")
