"""Determinism and resume state: seeding, RNG snapshots, the resume identity, and checkpoint selection.

Determinism policy (docs/training.md): every source of randomness in epoch ``e`` is reseeded from
``(training.seed, e, rank)`` when the epoch starts (Python, NumPy, torch, the transforms, the loader's shuffle
generator, the DistributedSampler), so an epoch's randomness does not depend on what ran before it. A run that
resumes from the checkpoint of epoch ``e`` therefore replays epochs ``e+1...`` exactly as the uninterrupted run
did. The global RNG states are saved in every checkpoint all the same and restored on resume.
"""

from __future__ import annotations

import ast
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpipe.config import PipelineConfig
from medpipe.datasets import data_identity
from medpipe.errors import CheckpointError
from medpipe.models.checkpoint import check_load_environment, load_checkpoint
from medpipe.runtime import short_hash

#: Checkpoint names in the order a resume tries them (``previous.pt`` is the one before the latest).
RESUME_CANDIDATES = ("last.pt", "previous.pt")


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of epoch ``epoch`` on ``rank`` (a fixed mix, < 2**31)."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**31 - 1)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool, cuda: bool) -> None:
    """``training.deterministic``: deterministic kernels (warn where none exists) and no cuDNN autotuning;
    otherwise cuDNN may autotune (faster, run-to-run differences of the order of float rounding on CUDA)."""
    if deterministic:
        if cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = cuda and not deterministic


def rng_state() -> dict[str, Any]:
    """The global RNG states, as plain lists and tensors (loadable with ``weights_only=True``)."""
    np_state: Any = np.random.get_state()
    return {
        "python": repr(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:

    random.setstate(ast.literal_eval(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


#: Fields that may change between a run and its resume: the length of the run, where the data (and a class CSV)
#: lives (its content is checked separately) and how it is fed (workers, caching). Anything else refuses the resume.
RESUMABLE_CHANGES = {"training": ("epochs", "num_workers", "cache", "cache_dir"),
                     "data": ("root", "splits_file", "class_csv")}  # the classes themselves are in the data identity


def resume_key(cfg: PipelineConfig) -> str:
    """Config identity for resuming: everything except :data:`RESUMABLE_CHANGES`."""
    d = cfg.to_dict()
    for section, keys in RESUMABLE_CHANGES.items():
        for key in keys:
            d[section].pop(key, None)
    return short_hash(d)


def config_changes(stored: dict[str, Any], current: PipelineConfig) -> list[str]:
    """``section.key: old -> new`` for every config value that differs from the run being resumed."""
    now = current.to_dict()
    out = []
    for section, value in now.items():
        old = stored.get(section)
        if isinstance(value, dict) and isinstance(old, dict) and section not in ("labels", "regions"):
            for key, v in value.items():
                if key in RESUMABLE_CHANGES.get(section, ()):
                    continue
                o = old.get(key)
                if o != v and not (isinstance(o, list | tuple) and isinstance(v, list | tuple) and list(o) == list(v)):
                    out.append(f"{section}.{key}: {o!r} -> {v!r}")
        elif str(old) != str(value) and not (isinstance(old, dict) and {str(k): x for k, x in old.items()} ==
                                             {str(k): x for k, x in value.items()}):
            out.append(f"{section}: {old!r} -> {value!r}")
    return out


#: The new ``last.pt`` is written under this name first; the rotation happens only once it is complete.
STAGED_CHECKPOINT = "next.pt"


def rotate_in(run_dir: Path, staged: Path) -> None:
    """``last.pt`` -> ``previous.pt``, then the completely written ``staged`` -> ``last.pt``."""
    if (run_dir / "last.pt").is_file():
        os.replace(run_dir / "last.pt", run_dir / "previous.pt")
    os.replace(staged, run_dir / "last.pt")


def case_identities(cases: list[Any]) -> dict[str, str]:
    """Per case: the identity of its files (ids, names, contents), to say what changed when a resume is refused."""
    return {c.case_id: data_identity([c]) for c in cases}


def dataset_changes(run_dir: Path, now: dict[str, str]) -> str:
    """What changed in the dataset since the run in ``run_dir`` began (from its split.json), in one phrase."""
    try:
        before = json.loads((run_dir / "split.json").read_text()).get("case_identity") or {}
    except (OSError, json.JSONDecodeError):
        return ""
    if not before:
        return ""
    gone = sorted(set(before) - set(now))
    new = sorted(set(now) - set(before))
    changed = sorted(c for c in set(before) & set(now) if before[c] != now[c])
    parts = [f"{what}: {', '.join(ids[:8])}{' ...' if len(ids) > 8 else ''}"
             for what, ids in (("cases gone", gone), ("new cases", new), ("cases whose files changed", changed))
             if ids]
    return "since the run began: " + "; ".join(parts) if parts else ""


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete temporary files a killed run left beside its outputs (``.<name>.<random>.tmp<suffix>``)."""
    removed = []
    for p in run_dir.glob(".*.tmp*"):
        if p.is_file() and not p.name.startswith(".medpipe-probe-"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def resumable(run_dir: Path) -> bool:
    return any((run_dir / name).is_file() for name in RESUME_CANDIDATES)


def pick_checkpoint(run_dir: Path, map_location: str) -> tuple[Path, dict[str, Any], list[str]]:
    """The newest loadable resume checkpoint; corrupt ones are renamed ``*.corrupt`` (quarantined).

    Returns (path, checkpoint, notices). Raises :class:`CheckpointError` naming each file and its problem when
    none can be loaded.
    """

    check_load_environment()  # an unsafe environment is an error, never a verdict on the files
    notices: list[str] = []
    problems: list[str] = []
    for name in RESUME_CANDIDATES:
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            return path, load_checkpoint(path, map_location=map_location), notices
        except CheckpointError as err:
            quarantine = path.with_name(path.name + ".corrupt")
            os.replace(path, quarantine)
            problems.append(f"{name}: {err.message}")
            notices.append(f"{path}: {err.message}; moved to {quarantine.name}")
    if problems:
        raise CheckpointError("no usable checkpoint to resume from: " + "; ".join(problems), path=run_dir,
                              hint="the unreadable files were renamed *.corrupt; start a new run")
    raise CheckpointError("nothing to resume: no last.pt in the run folder", path=run_dir)
