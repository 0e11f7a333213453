"""How much memory this process may still use, for pre-flight refusals before large allocations.

The answer is the smallest of: the kernel's ``MemAvailable`` (Linux ``/proc/meminfo``), the cgroup limit
(``memory.max``, containers) minus its current use, and the address-space limit (``ulimit -v``). ``None`` when
none of them is known (e.g. not Linux).
"""

from __future__ import annotations

import resource
from pathlib import Path


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def _rlimit_available() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        vm_size = 0
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                vm_size = int(line.split()[1]) * 1024
        return max(0, soft - vm_size)
    except (OSError, ValueError, IndexError):
        return soft


def available_bytes() -> int | None:
    """Bytes this process can still allocate (best estimate), or ``None`` when unknown."""
    known = [v for v in (_meminfo_available(), _cgroup_available(), _rlimit_available()) if v is not None]
    return min(known) if known else None


def gib(n_bytes: float) -> str:
    """``12.3 GiB`` (or MiB below 1 GiB)."""
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "unable to allocate",
                "not enough memory")


def _allocation_failure(err: BaseException) -> BaseException | None:
    """The failed allocation behind ``err``, following the ``raise ... from`` chain (MONAI wraps errors of its
    transforms in ``RuntimeError("applying transform ...")``)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError) or (
                isinstance(current, RuntimeError) and any(m in str(current).lower() for m in _OOM_MARKERS)):
            return current
        current = current.__cause__ or current.__context__
    return None


def is_out_of_memory(err: BaseException) -> bool:
    """True for a MemoryError, or a RuntimeError from torch/MONAI that reports (or wraps) a failed allocation
    (CPU or CUDA: ``torch.cuda.OutOfMemoryError`` is a RuntimeError saying "out of memory")."""
    return _allocation_failure(err) is not None


def out_of_memory_message(err: BaseException, stage: str) -> str:
    """One line for a failed allocation: the stage, what the library tried to allocate, what is available."""
    err = _allocation_failure(err) or err
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    detail = first.split(":")[-1].strip() if "DefaultCPUAllocator" in first else first
    free = available_bytes()
    avail = f"; {gib(free)} of memory available" if free is not None else ""
    return f"out of memory while {stage} ({detail[:160]}{avail})"
