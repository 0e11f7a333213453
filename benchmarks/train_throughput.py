"""Training throughput: medpipe's training loop vs a plain MONAI-tutorial loop, same model, patch and transforms.

    python benchmarks/train_throughput.py --device cpu
    python benchmarks/train_throughput.py --device cuda            # AMP (bf16) on, 8 loader workers

Both loops draw batches from the same transform chain (``medpipe.transforms.train_transforms``: load, orient,
resample, normalise, pad, class-balanced crops, augmentation) and train the same DynUNet with the same loss.
medpipe: ``Trainer`` (CacheDataset of the preprocessed cases, DataLoader workers, pinned memory, AMP).
Baseline: ``monai.data.Dataset`` + ``DataLoader`` (every case read and preprocessed again each time), the
MONAI tutorial pattern. Reported per loop: iterations/s, and the split of step time between waiting for the next
batch and the model (forward + backward + optimiser, synchronised on CUDA). After one warm-up epoch each, the two
loops run alternately for ``--rounds`` timed epochs and the median round is reported, so that load from other
processes on a shared machine affects both alike.
The data are synthetic CT-like volumes written to a temporary folder (NIfTI, gzip), so I/O is real.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medpipe.config import PipelineConfig, config_from_dict  # noqa: E402
from medpipe.training.distributed import DistInfo  # noqa: E402
from medpipe.training.events import EpochStats  # noqa: E402
from medpipe.training.trainer import Trainer  # noqa: E402

PRESETS = {
    "cpu": {"shape": (96, 96, 64), "patch": (64, 64, 32), "filters": [8, 16, 32, 64], "iters": 6, "workers": 1,
            "batch": 1, "samples": 2, "cases": 6},
    "cuda": {"shape": (256, 256, 160), "patch": (128, 128, 96), "filters": [32, 64, 128, 256, 320, 320],
             "iters": 60, "workers": 8, "batch": 1, "samples": 2, "cases": 16},
}


def make_data(root: Path, n: int, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """KiTS-layout synthetic CT: a body (40 HU) in air with two kidney-like ellipsoids (label 1) and a tumour."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    aff = np.diag([0.8, 0.8, 1.5, 1.0])
    for i in range(n):
        body = (grid[0] / 0.9) ** 2 + (grid[1] / 0.7) ** 2 < 1
        img = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, shape)
        lab = np.zeros(shape, np.uint8)
        for side in (-0.45, 0.45):
            c = np.array([side, 0.1, rng.uniform(-0.2, 0.2)])
            kid = ((grid[0] - c[0]) / 0.15) ** 2 + ((grid[1] - c[1]) / 0.2) ** 2 + ((grid[2] - c[2]) / 0.35) ** 2 < 1
            lab[kid] = 1
            img[kid] = 180 + rng.normal(0, 10, int(kid.sum()))
        tum = ((grid[0] - 0.45) ** 2 + (grid[1] - 0.1) ** 2 + grid[2] ** 2) < 0.08**2
        lab[tum] = 2
        img[tum] = 90
        case = root / f"case_{i:05d}"
        case.mkdir(parents=True)
        nib.save(nib.Nifti1Image(img.astype(np.int16), aff), str(case / "imaging.nii.gz"))
        nib.save(nib.Nifti1Image(lab, aff), str(case / "segmentation.nii.gz"))
    return root


def make_config(root: Path, p: dict[str, Any], device: str, workers: int) -> PipelineConfig:
    depth = len(p["filters"])
    return config_from_dict({
        "modality": "CT", "channels": ["CT"], "labels": {0: "background", 1: "kidney", 2: "tumor"},
        "data": {"root": str(root), "format": "kits", "val_fraction": 0.2},
        "transforms": {"spacing_mm": [0.8, 0.8, 1.5], "intensity": "ct_window", "hu_window": [-79.0, 304.0],
                       "crop_foreground": False, "patch_size_vox": list(p["patch"]), "samples_per_case": p["samples"]},
        "model": {"arch": "dynunet", "channels": p["filters"], "strides": [2] * (depth - 1), "deep_supervision": True},
        "training": {"epochs": 2, "iterations_per_epoch": p["iters"], "batch_size": p["batch"], "lr": 0.01,
                     "optimizer": "sgd", "scheduler": "poly", "amp": device.startswith("cuda"),
                     "num_workers": workers, "cache": True},
        "inference": {"roi_size_vox": list(p["patch"])},
    })


def medpipe_loop(cfg: PipelineConfig, device: str, run_dir: Path) -> tuple[Callable[[], EpochStats], float]:
    """medpipe's own loop (``Trainer.train_epoch``); returns (one timed epoch, seconds to build the cache)."""
    trainer = Trainer(cfg, run_dir, device, DistInfo())
    t0 = time.perf_counter()
    trainer.setup_data()
    setup_s = time.perf_counter() - t0
    trainer.setup_model()
    epochs = iter(range(1, 1_000_000))
    return lambda: trainer.train_epoch(next(epochs)), setup_s


def baseline_loop(cfg: PipelineConfig, device: str) -> Callable[[], EpochStats]:
    """The MONAI tutorial loop: Dataset (no cache) + DataLoader, same transforms, model, loss, AMP."""
    from monai.data import DataLoader, Dataset, list_data_collate

    from medpipe.datasets import load_dataset, split_cases
    from medpipe.models.factory import build_model
    from medpipe.training.losses import SegmentationLoss
    from medpipe.transforms import train_transforms

    train_cases, _ = split_cases(load_dataset(cfg.data.root).cases, cfg.data.val_fraction, cfg.data.seed)
    ds = Dataset([c.as_dict() for c in train_cases], train_transforms(cfg))
    t = cfg.training
    loader = DataLoader(ds, batch_size=t.batch_size, shuffle=True, num_workers=t.num_workers,
                        collate_fn=list_data_collate, pin_memory=device.startswith("cuda"))
    model = build_model(cfg).to(device)
    loss_fn = SegmentationLoss(cfg, deep_supervision=True)
    opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=0.99, nesterov=True)
    amp = device.startswith("cuda")
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16

    def epoch() -> EpochStats:
        model.train()
        wait = compute = 0.0
        losses: list[float] = []
        t0 = time.perf_counter()
        while len(losses) < t.iterations_per_epoch:
            for batch in loader:
                t1 = time.perf_counter()
                wait += t1 - t0
                x, y = batch["image"].to(device), batch["label"].to(device)
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device_type="cuda", dtype=dtype, enabled=amp):
                    loss = loss_fn(list(torch.unbind(model(x), 1)), y)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                if amp:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                compute += t0 - t1
                if len(losses) >= t.iterations_per_epoch:
                    break
        return EpochStats(float(np.mean(losses)), len(losses), wait, compute)

    return epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per loop")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (both loops)")
    ap.add_argument("--rounds", type=int, default=3, help="timed epochs per loop, alternating (median reported)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    preset: dict[str, Any] = dict(PRESETS["cuda" if args.device.startswith("cuda") else "cpu"])
    if args.iters:
        preset["iters"] = args.iters
    workers = args.workers if args.workers is not None else preset["workers"]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_data(Path(tmp) / "kits", preset["cases"], preset["shape"])
        cfg = make_config(root, preset, args.device, workers)
        mp_epoch, setup_s = medpipe_loop(cfg, args.device, Path(tmp) / "run")
        base_epoch = baseline_loop(cfg, args.device)
        mp_epoch(), base_epoch()  # warm-up (and, for the tutorial loop, nothing is cached anyway)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        timed: dict[str, list[EpochStats]] = {"mp": [], "base": []}
        for _ in range(args.rounds):
            timed["mp"].append(mp_epoch())
            timed["base"].append(base_epoch())
        peak = torch.cuda.max_memory_allocated() / 1e9 if args.device.startswith("cuda") else float("nan")
    rows: list[dict[str, Any]] = []
    for name, key in (("medpipe (CacheDataset + workers)", "mp"), ("MONAI tutorial (Dataset + DataLoader)", "base")):
        s = sorted(timed[key], key=lambda e: e.steps / (e.data_wait_s + e.compute_s))[len(timed[key]) // 2]
        total = s.data_wait_s + s.compute_s
        rows.append({"loop": name, "iters": s.steps, "it_per_s": s.steps / total, "data_wait_pct": 100 * s.data_wait_s
                     / total, "model_pct": 100 * s.compute_fraction,
                     "rounds_it_per_s": [round(e.steps / (e.data_wait_s + e.compute_s), 3) for e in timed[key]]})
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}), "
          f"torch {torch.__version__}, volume {preset['shape']}, patch {preset['patch']}, "
          f"{cfg.training.batch_size * cfg.transforms.samples_per_case} patches/step, workers {workers}, "
          f"AMP {cfg.training.amp and args.device.startswith('cuda')}")
    print(f"{'loop':40s} {'iters':>5s} {'it/s':>7s} {'data wait':>10s} {'in model':>9s}")
    for r in rows:
        print(f"{r['loop']:40s} {r['iters']:5d} {r['it_per_s']:7.2f} {r['data_wait_pct']:9.1f}% {r['model_pct']:8.1f}%"
              f"   rounds: {r['rounds_it_per_s']}")
    print(f"speed-up medpipe / tutorial: {rows[0]['it_per_s'] / rows[1]['it_per_s']:.2f}x; "
          f"medpipe cache build {setup_s:.1f} s (once per run)"
          + (f"; peak GPU memory {peak:.1f} GB" if peak == peak else ""))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "setup_s": setup_s, "peak_gpu_gb": peak,
                                         "preset": {k: list(v) if isinstance(v, tuple) else v
                                                    for k, v in preset.items()}}, indent=2))


if __name__ == "__main__":
    main()
