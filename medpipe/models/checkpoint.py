"""Safe checkpoints: plain dicts of tensors and primitives, written atomically and read with
``torch.load(weights_only=True)`` only, so that a checkpoint can never run code when it is loaded.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medpipe.config import PipelineConfig, config_from_dict
from medpipe.errors import CheckpointError
from medpipe.io.atomic import write_bytes_atomic
from medpipe.models.factory import build_model

CHECKPOINT_FORMAT = "medpipe-checkpoint/1"


def save_checkpoint(path: str | Path, model: nn.Module, cfg: PipelineConfig, **extra: Any) -> None:
    """Write state dict + resolved config + label map (+ optimizer/scheduler/epoch/... in ``extra``) atomically."""
    inner = getattr(model, "module", None)  # DistributedDataParallel wraps the network
    module = inner if isinstance(inner, nn.Module) else model
    payload = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "config": cfg.to_dict(),
        "labels": {str(k): v for k, v in cfg.labels.items()},
        **extra,
    }
    buffer = io.BytesIO()  # serialised in memory, then written by Python: a failed write names its errno
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getvalue())


class UnsafeEnvironmentError(CheckpointError):
    """The environment would make checkpoint loading unsafe: a problem of the environment, not of the file."""


def check_load_environment() -> None:
    """Refuse ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` (it would let ``torch.load`` unpickle arbitrary code)."""
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "").strip() not in ("", "0"):
        raise UnsafeEnvironmentError(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set in the environment; medpipe refuses to load checkpoints "
            "unsafely (no checkpoint was touched)", hint="unset the variable and run again")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; refuse corrupt, foreign or unsafe files."""
    path = Path(path)
    check_load_environment()
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path=path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else "unsafe content"
        raise CheckpointError(f"refused: not a plain weights file ({first})", path=path) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"corrupt or truncated checkpoint ({str(err).splitlines()[0][:160]})", path=path) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"not a medpipe checkpoint (expected format {CHECKPOINT_FORMAT})", path=path)
    return ckpt


def config_of(ckpt: dict[str, Any], path: str | Path) -> PipelineConfig:
    """The resolved config stored in a checkpoint."""
    cfg = dict(ckpt["config"])
    cfg["labels"] = {int(k): v for k, v in cfg["labels"].items()}
    if "label_info" in cfg:
        cfg["label_info"] = {int(k): v for k, v in cfg["label_info"].items()}
    return config_from_dict(cfg, source=f"{path} (stored config)")


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, PipelineConfig]:
    """Rebuild the network from a checkpoint and load its weights strictly."""
    return model_from_loaded(load_checkpoint(path), path, device)


def model_from_loaded(ckpt: dict[str, Any], path: str | Path,
                      device: str | torch.device = "cpu") -> tuple[nn.Module, PipelineConfig]:
    """:func:`model_from_checkpoint` for a checkpoint already read with :func:`load_checkpoint`."""
    cfg = config_of(ckpt, path)
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"weights do not fit the stored architecture: {str(err)[:300]}", path=path) from err
    return model.to(device).eval(), cfg

