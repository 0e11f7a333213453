"""Transform chains: patch sampling shapes, network-space preprocessing, and the multi-channel caching race."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.data import CacheDataset

from medpipe.datasets import load_dataset
from medpipe.transforms import train_transforms, val_transforms
from tests.datasets.test_layouts import make_layout
from tests.training.test_train import tiny


def test_train_chain_yields_patches_of_every_channel(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "b", "brats2023", n=1)
    cfg = tiny(root, "brats2023")
    out = train_transforms(cfg)(load_dataset(root).cases[0].as_dict())
    assert len(out) == cfg.transforms.samples_per_case
    for item in out:
        assert tuple(item["image"].shape) == (4, 8, 8, 8) and tuple(item["label"].shape) == (1, 8, 8, 8)
        assert set(np.unique(np.asarray(item["label"]))) <= {0.0, 1.0, 2.0, 3.0}


def test_val_chain_is_in_ras_at_the_target_spacing(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "k", "kits", n=1)
    cfg = tiny(root, "kits", transforms={"spacing_mm": [2.0, 2.0, 2.0]})
    item = val_transforms(cfg)(load_dataset(root).cases[0].as_dict())
    assert tuple(item["image"].shape) == (1, 6, 6, 8)  # 12x10x8 voxels of 1x1x2 mm at 2 mm (MONAI rounding)
    assert np.allclose(np.abs(np.diag(np.asarray(item["image"].affine))[:3]), 2.0)
    assert float(item["image"].max()) <= 1.0 and float(item["image"].min()) >= 0.0  # CT window scaled to [0, 1]


def test_threaded_cache_keeps_every_channel_of_every_case(tmp_path: Path) -> None:
    """MONAI's NibabelReader kept the last read()'s file names on the shared instance: with CacheDataset's
    threads, 4-channel cases were stacked from 1 file (in ~80 % of runs before the fix)."""
    root = make_layout(tmp_path / "b", "brats2023", n=6)
    cfg = tiny(root, "brats2023")
    data = [c.as_dict() for c in load_dataset(root).cases]
    for _ in range(4):
        ds = CacheDataset(data, val_transforms(cfg), cache_rate=1.0, num_workers=8, progress=False)
        assert [ds[i]["image"].shape[0] for i in range(len(data))] == [4] * len(data)
