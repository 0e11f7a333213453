"""Training and validation datasets/loaders: a cache of preprocessed cases so that epochs after the first are
not I/O bound, and a DistributedSampler under DDP.

Caching (``training``): ``cache_dir`` set -> MONAI ``PersistentDataset`` (preprocessed cases on disk, shared by
ranks, restarts and runs; keyed by the preprocessing settings and the dataset identity); else ``cache: true`` ->
``CacheDataset`` (in memory, built before the first epoch); else no cache. Only the deterministic head of the
chain (load, orient, resample, normalise, crop, pad) is cached; patch sampling and augmentation run every time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset, list_data_collate
from torch.utils.data.distributed import DistributedSampler

from medpipe.config import PipelineConfig
from medpipe.datasets import Case
from medpipe.runtime import short_hash
from medpipe.training.distributed import DistInfo
from medpipe.transforms import (
    classification_preprocess,
    classification_train_transforms,
    train_transforms,
    val_transforms,
)

#: Shared memory the loader's workers are assumed to need per worker (batches in flight), at least.
SHM_MIN_PER_WORKER = 64 * 2**20


def shm_free_bytes(folder: Path = Path("/dev/shm")) -> int | None:
    """Free bytes in the shared-memory file system (``None`` where there is none, e.g. not Linux)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def shm_need_bytes(cfg: PipelineConfig) -> int:
    """Shared memory the training loader's workers may hold at once: ``prefetch_factor`` (4) batches of image
    and label patches per worker, float32, and at least :data:`SHM_MIN_PER_WORKER` per worker. ``num_workers``
    must be resolved to a number (``resources.loader_workers``) first."""
    t = cfg.training
    patch = int(np.prod(cfg.transforms.patch_size_vox)) * t.batch_size * (cfg.in_channels + 1) * 4
    return int(t.num_workers) * max(SHM_MIN_PER_WORKER, 4 * patch * max(1, cfg.transforms.samples_per_case))


def shm_plan(workers: int, need: int, free: int | None) -> str | None:
    """``None`` when worker processes can share batches through /dev/shm as usual, else the notice to give when
    falling back to loading in the main process (torch's worker processes hand every batch over through
    /dev/shm, whichever sharing strategy is set, so fewer workers is the only fallback that cannot fail)."""
    if workers == 0 or free is None or free >= need:
        return None
    return (f"/dev/shm has {free / 2**20:.0f} MiB free, the {workers} loader workers may need about "
            f"{need / 2**20:.0f} MiB: loading in the main process instead (num_workers 0, slower). To fix it, give the "
            "container more shared memory (docker run --shm-size=2g) or lower training.num_workers")


@dataclass
class Loaders:
    train_ds: Any
    val_ds: Any
    train_tf: Any
    loader: Any
    sampler: Any
    generator: torch.Generator


def _persistent_dataset_class() -> Any:

    class RobustPersistentDataset(PersistentDataset):  # type: ignore[misc]
        """PersistentDataset that recomputes a cache file left truncated by a killed process (MONAI only
        recomputes files with a bad magic number)."""

        def _cachecheck(self, item_transformed: Any) -> Any:
            try:
                return super()._cachecheck(item_transformed)
            except (RuntimeError, EOFError) as err:
                if self.cache_dir is None or ("zip" not in str(err).lower() and not isinstance(err, EOFError)):
                    raise
                name = self.hash_func(item_transformed).decode("utf-8") + self.transform_hash
                (Path(self.cache_dir) / f"{name}.pt").unlink(missing_ok=True)
                return super()._cachecheck(item_transformed)

    return RobustPersistentDataset


def cache_key(cfg: PipelineConfig, identity: str) -> str:
    """Cache folder name: the preprocessing settings + patch padding + channels + dataset identity."""
    t = cfg.transforms
    keys = {"orientation": t.orientation, "spacing_mm": list(t.spacing_mm), "intensity": t.intensity,
            "hu_window": list(t.hu_window), "crop": t.crop_foreground, "patch": list(t.patch_size_vox),
            "channels": list(cfg.channels), "data": identity}
    if cfg.is_classification:  # another chain (whole volumes, no label map): another cache
        keys["task"] = cfg.task
    return short_hash(keys)


class _Counter:
    """Counts cases cached in memory and reports ``(done, total)`` after each (threads may finish together)."""

    def __init__(self, total: int, report: Callable[[int, int], None] | None) -> None:
        self.total, self.report, self.done, self.lock = total, report, 0, threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.done += 1
            if self.report is not None:
                self.report(self.done, self.total)


def _reporting_cache_class() -> Any:
    class ReportingCacheDataset(CacheDataset):  # type: ignore[misc]
        """CacheDataset that calls ``on_item()`` after each case it has preprocessed into memory."""

        def __init__(self, *args: Any, on_item: Callable[[], None], **kwargs: Any) -> None:
            self._on_item = on_item
            super().__init__(*args, **kwargs)

        def _load_cache_item(self, idx: int) -> Any:
            item = super()._load_cache_item(idx)
            self._on_item()
            return item

    return ReportingCacheDataset


def case_dicts(cases: list[Case], targets: dict[str, int] | None = None) -> list[dict[str, object]]:
    """MONAI data dicts of ``cases``; with ``targets`` (classification) the image, case id and ``class`` index."""
    if targets is None:
        return [c.as_dict() for c in cases]
    return [{"image": c.as_dict()["image"], "case_id": c.case_id, "class": int(targets[c.case_id])} for c in cases]


def make_dataset(cfg: PipelineConfig, cases: list[Case], transform: Any, identity: str, part: str,
                 on_item: Callable[[], None] = lambda: None, targets: dict[str, int] | None = None) -> Any:

    data = case_dicts(cases, targets)
    t = cfg.training
    if t.cache_dir:
        folder = Path(t.cache_dir) / cache_key(cfg, identity) / part
        folder.mkdir(parents=True, exist_ok=True)
        return _persistent_dataset_class()(data=data, transform=transform, cache_dir=folder)
    if t.cache:
        threads = max(1, min(8, os.cpu_count() or 1))
        return _reporting_cache_class()(data=data, transform=transform, cache_rate=1.0, num_workers=threads,
                                        progress=False, on_item=on_item)
    return Dataset(data=data, transform=transform)


class EpochSampler(DistributedSampler):  # type: ignore[type-arg]
    """A DistributedSampler (a single process is rank 0 of 1) whose epoch holds ``samples_per_rank`` indices per
    rank, drawn from fresh seeded permutations of the dataset, so that ``iterations_per_epoch`` batches come from
    one pass of the loader: worker processes start once per epoch, not once per pass over the cases.

    With ``weights`` (one per case; class-balanced sampling) the indices are drawn with replacement with those
    weights instead. Every rank draws the same seeded sequence and takes its own share, so under DDP the ranks
    see disjoint draws of one balanced stream."""

    def __init__(self, dataset: Any, num_replicas: int, rank: int, seed: int, samples_per_rank: int,
                 weights: list[float] | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        if samples_per_rank > 0:
            self.num_samples = samples_per_rank
            self.total_size = samples_per_rank * num_replicas
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def __iter__(self) -> Any:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.weights is not None:
            drawn = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g).tolist()
            return iter(drawn[self.rank : self.total_size : self.num_replicas])
        indices: list[int] = []
        while len(indices) < self.total_size:
            indices += torch.randperm(n, generator=g).tolist()
        return iter(indices[self.rank : self.total_size : self.num_replicas])


def build_loaders(cfg: PipelineConfig, train_cases: list[Case], val_cases: list[Case], identity: str,
                  dist: DistInfo, device: str, notices: list[str] | None = None,
                  on_cached: Callable[[int, int], None] | None = None,
                  targets: dict[str, int] | None = None) -> Loaders:
    """Datasets and the training loader. Under DDP each rank validates its share ``val_cases[rank::world]``.
    With worker processes and too little /dev/shm (Docker's 64 MB default) the loader runs without workers and
    a notice saying so (and how to fix it) is appended to ``notices``. ``on_cached(done, total)`` reports caching.
    ``targets`` (``task: classification``): the class index of every case; whole volumes instead of patches, and
    with ``training.balanced_sampling`` cases drawn with weights 1 / (cases of their class)."""
    note = shm_plan(int(cfg.training.num_workers), shm_need_bytes(cfg), shm_free_bytes())
    if note is not None and notices is not None:
        notices.append(note)

    classify = targets is not None
    train_tf = classification_train_transforms(cfg) if classify else train_transforms(cfg)
    val_tf = classification_preprocess(cfg) if classify else val_transforms(cfg)
    mine = val_cases[dist.rank::dist.world_size]
    counter = _Counter(len(train_cases) + len(mine), on_cached)
    train_ds = make_dataset(cfg, train_cases, train_tf, identity, "train", counter, targets)
    val_ds = make_dataset(cfg, mine, val_tf, identity, "val", counter, targets)
    generator = torch.Generator().manual_seed(cfg.training.seed)
    t = cfg.training
    weights = (balanced_weights([targets[c.case_id] for c in train_cases])
               if targets is not None and cfg.balanced else None)
    sampler = EpochSampler(train_ds, dist.world_size, dist.rank, t.seed, t.iterations_per_epoch * t.batch_size,
                           weights)
    workers = 0 if note is not None else int(t.num_workers)  # resolved by the trainer (resources.loader_workers)
    loader = DataLoader(train_ds, batch_size=t.batch_size, shuffle=False, sampler=sampler,
                        num_workers=workers, collate_fn=list_data_collate, generator=generator,
                        pin_memory=device.startswith("cuda"), persistent_workers=False,
                        prefetch_factor=4 if workers > 0 else None)
    return Loaders(train_ds, val_ds, train_tf, loader, sampler, generator)


def balanced_weights(classes: list[int]) -> list[float]:
    """Per case: 1 / (number of cases of its class), so that each class is drawn equally often."""
    counts = np.bincount(np.asarray(classes, dtype=np.int64))
    return [1.0 / float(counts[c]) for c in classes]
