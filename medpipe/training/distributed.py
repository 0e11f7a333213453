"""Multi-GPU / multi-node training through ``torchrun`` (PyTorch DDP).

The same command line works alone or under ``torchrun --nproc_per_node=N``: torchrun sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` (the launcher's protocol, not medpipe
configuration), and :func:`init_distributed` joins the process group: NCCL on CUDA (one GPU per process,
``cuda:LOCAL_RANK``), gloo on CPU. Only rank 0 logs, writes checkpoints and reports progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from medpipe.errors import MedpipeError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher using its variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str) -> tuple[DistInfo, str]:
    """Join the torchrun process group if there is one; returns (info, device for this rank)."""
    if not launched_by_torchrun():
        return DistInfo(), device
    try:
        info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")),
                        int(os.environ["WORLD_SIZE"]))
    except ValueError as err:
        raise MedpipeError(f"malformed torchrun environment ({err})") from err
    if device.startswith("cuda"):
        if torch.cuda.device_count() <= info.local_rank:
            raise MedpipeError(f"rank {info.rank} wants cuda:{info.local_rank} but only "
                               f"{torch.cuda.device_count()} GPU(s) are visible",
                               hint="use --nproc_per_node no larger than the number of GPUs")
        device = f"cuda:{info.local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return info, device


def shutdown() -> None:
    """Leave the process group (safe to call when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_across_ranks(value: float, info: DistInfo, device: str) -> float:
    """The mean of a scalar over all ranks (identity without DDP)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / info.world_size


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` without DDP)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
