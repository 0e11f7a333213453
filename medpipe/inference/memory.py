"""Peak memory of this process: host RSS (Linux ``VmHWM``, resettable per case) and device memory (CUDA)."""

from __future__ import annotations

import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peaks(device: str) -> bool:
    """Start a new peak window: the host high-water mark (where Linux allows it) and CUDA's peak counters.
    Returns whether the host peak could be reset (else the peak is the process's since its start)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def host_peak_mb() -> float:
    """Peak resident set size (MiB) since the last :func:`reset_peaks` (or the process start)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def peaks(device: str) -> dict[str, float | None]:
    """``{"host_rss_peak_mb": ..., "device_peak_mb": ...}`` (device: None on CPU)."""
    dev: float | None = None
    if device.startswith("cuda"):
        import torch

        dev = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return {"host_rss_peak_mb": host_peak_mb(), "device_peak_mb": dev}
