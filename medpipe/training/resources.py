"""Fit a training run to the machine it runs on: loader workers vs free cores, the preprocessing cache vs RAM.

Both decisions come back with a notice (shown by the CLI) whenever the config's request is changed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np

from medpipe.config import PipelineConfig
from medpipe.datasets.layouts.base import Case

#: Most loader workers ``auto`` picks (more rarely helps a 3D patch pipeline).
MAX_AUTO_WORKERS = 8
#: The in-memory cache may use at most this fraction of the RAM available when the run starts.
CACHE_RAM_FRACTION = 0.5


def cores_per_process(world_size: int = 1) -> int:
    """CPU cores this process may use (its affinity set, shared among the job's processes on this node)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, world_size))


def loader_workers(requested: int | str, world_size: int = 1) -> tuple[int, str | None]:
    """Loader worker processes for ``training.num_workers`` and a notice when the request was changed. One core
    stays with the training process: ``auto`` takes the others (up to 8), an explicit number is capped to them."""
    free = cores_per_process(world_size) - 1
    if requested == "auto":
        return min(MAX_AUTO_WORKERS, free), None
    n = int(requested)
    if n > free:
        return free, (f"training.num_workers {n} capped to {free}: this process has {free + 1} CPU core(s), "
                      "one of them for the training step itself")
    return n, None


def cache_bytes(cfg: PipelineConfig, cases: list[Case]) -> int:
    """Estimated bytes of the preprocessed cases in memory (float32 image channels + label, at the target
    spacing), from the file headers only."""
    target = np.asarray(cfg.transforms.spacing_mm, dtype=float)
    total = 0.0
    for case in cases:
        hdr = cast(nib.Nifti1Image, nib.load(str(case.images[0]))).header
        shape = np.asarray(hdr.get_data_shape()[:3], dtype=float)
        zooms = np.asarray(hdr.get_zooms()[:3], dtype=float)
        voxels = float(np.prod(shape * zooms) / np.prod(target))  # the volume in mm³ over a target voxel's
        total += voxels * 4 * (cfg.in_channels + 1)
    return int(total)


def available_ram() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def fit_cache(cfg: PipelineConfig, cases: list[Case], run_dir: Path,
              ram: int | None = None) -> tuple[PipelineConfig, str | None]:
    """The config to build the datasets with and a notice when the cache had to change: an in-memory cache
    (``training.cache`` without ``cache_dir``) that would take more than half the available RAM becomes a
    persistent cache on disk in ``<run>/preprocessed`` (when the disk has room), else no cache."""
    t = cfg.training
    if t.cache_dir or not t.cache or not cases:
        return cfg, None
    need = cache_bytes(cfg, cases)
    ram = available_ram() if ram is None else ram
    if need <= CACHE_RAM_FRACTION * ram:
        return cfg, None
    gb = f"~{need / 2**30:.1f} GB for {len(cases)} cases, {ram / 2**30:.1f} GB RAM available"
    folder = run_dir / "preprocessed"
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(folder).free > 2 * need:
        return (dataclasses.replace(cfg, training=dataclasses.replace(t, cache_dir=str(folder))),
                f"the in-memory cache would not fit ({gb}): caching preprocessed cases on disk in {folder}")
    return (dataclasses.replace(cfg, training=dataclasses.replace(t, cache=False)),
            f"the in-memory cache would not fit ({gb}) and the disk has no room for it: no cache (slower epochs)")
