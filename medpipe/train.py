"""Training: cached MONAI datasets, Dice+CE, AMP on CUDA, sliding-window validation, atomic checkpoints, resume.

The run folder holds ``config.yaml`` (resolved config), ``split.json``, ``last.pt`` (every epoch), ``best.pt``
(best mean validation Dice), ``metrics.csv``, ``training_curve.png`` and TensorBoard logs when available.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpipe.config import PipelineConfig, dump_config
from medpipe.datasets import Case, load_dataset, split_cases
from medpipe.errors import CheckpointError, ConfigError, DatasetError, InputError
from medpipe.io.atomic import ensure_writable_dir, write_json_atomic, write_text_atomic
from medpipe.io.geometry import Grid, describe_mismatch, grids_match
from medpipe.io.nifti import inspect_nifti, load_label
from medpipe.runlog import RunLog, read_rows
from medpipe.runtime import resolve_device


@dataclass(frozen=True)
class TrainEvent:
    """Progress reported to the caller (the CLI renders it)."""

    kind: str  # "start" | "step" | "epoch" | "validation" | "done"
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    loss: float | None = None
    dice: dict[str, float] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: int
    best_dice: float
    last_dice: dict[str, float]


def check_cases(cases: list[Case], labels: dict[int, str], n_channels: int) -> None:
    """Pre-flight before training: readable images, channel count, image/label grids, label values."""
    allowed = set(labels)
    for case in cases:
        if len(case.images) != n_channels and not (len(case.images) == 1 and n_channels > 1):
            raise DatasetError(f"case {case.case_id}: {len(case.images)} channel files, expected {n_channels}",
                               path=case.images[0].parent)
        infos = [inspect_nifti(p, allow_4d=n_channels > 1) for p in case.images]
        ref = Grid(tuple(infos[0].shape[:3]), infos[0].affine)  # type: ignore[arg-type]
        for info in infos[1:]:
            g = Grid(tuple(info.shape[:3]), info.affine)  # type: ignore[arg-type]
            if not grids_match(g, ref):
                raise InputError(f"case {case.case_id}: channel grid {describe_mismatch(g, ref)}", path=info.path)
        if case.label is None:
            continue
        lab, info = load_label(case.label, allowed)
        g = Grid(tuple(info.shape[:3]), info.affine)  # type: ignore[arg-type]
        if not grids_match(g, ref, tol_mm=1e-3):
            raise InputError(f"case {case.case_id}: label grid disagrees with the image: {describe_mismatch(g, ref)}",
                             path=case.label)


def data_fingerprint(cases: list[Case]) -> str:
    """A cheap dataset identity: case ids, file names and sizes (a changed dataset refuses a resume)."""
    h = hashlib.sha256()
    for c in sorted(cases, key=lambda c: c.case_id):
        for p in (*c.images, *([c.label] if c.label else [])):
            h.update(f"{c.case_id}|{p.name}|{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def resume_key(cfg: PipelineConfig) -> str:
    """Config identity for resuming: everything but the epoch count (which a resume may extend)."""
    return cfg.with_overrides(training={"epochs": 1}).digest()


def _rng_state(transforms: Any) -> dict[str, Any]:
    np_state = np.random.get_state()
    tstates = []
    for t in getattr(transforms, "transforms", []):
        if hasattr(t, "R"):
            s = t.R.get_state()
            tstates.append([s[0], s[1].tolist(), int(s[2]), int(s[3]), float(s[4])])
        else:
            tstates.append(None)
    return {
        "python": repr(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "transforms": tstates,
    }


def _set_rng_state(state: dict[str, Any], transforms: Any) -> None:
    import ast

    random.setstate(ast.literal_eval(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for t, s in zip(getattr(transforms, "transforms", []), state.get("transforms", [])):
        if s is not None and hasattr(t, "R"):
            t.R.set_state((s[0], np.asarray(s[1], dtype=np.uint32), s[2], s[3], s[4]))


class Trainer:
    """One training run. Library code: reports progress through ``on_event``, never prints."""

    def __init__(self, cfg: PipelineConfig, run_dir: Path, device: str = "auto",
                 on_event: Callable[[TrainEvent], None] | None = None) -> None:
        from monai.utils import set_determinism

        self.cfg, self.run_dir = cfg, ensure_writable_dir(run_dir)
        self.device = resolve_device(device)
        self.emit = on_event or (lambda e: None)
        set_determinism(seed=cfg.training.seed, use_deterministic_algorithms=cfg.training.deterministic or None)
        self.amp_dtype = None
        if cfg.training.amp and self.device.startswith("cuda"):
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    # ----- data ---------------------------------------------------------------------------------------------
    def setup_data(self) -> None:
        from monai.data import CacheDataset, DataLoader, Dataset, list_data_collate

        from medpipe.transforms import train_transforms, val_transforms

        cfg = self.cfg
        if not cfg.data.root:
            raise ConfigError("no dataset: set data.root in the config or pass --data DIR")
        ds = load_dataset(cfg.data.root, cfg.data.format)
        self.train_cases, self.val_cases = split_cases(ds.cases, cfg.data.val_fraction, cfg.data.seed)
        check_cases(self.train_cases + self.val_cases, cfg.labels, cfg.in_channels)
        self.fingerprint = data_fingerprint(self.train_cases + self.val_cases)
        write_json_atomic(self.run_dir / "split.json", {
            "train": [c.case_id for c in self.train_cases], "val": [c.case_id for c in self.val_cases]})
        cache = CacheDataset if cfg.training.cache else Dataset
        kw: dict[str, Any] = {"cache_rate": 1.0, "progress": False, "num_workers": 0} if cfg.training.cache else {}
        self.train_tf = train_transforms(cfg)
        self.train_tf.set_random_state(seed=cfg.training.seed)
        self.train_ds = cache(data=[c.as_dict() for c in self.train_cases], transform=self.train_tf, **kw)
        self.val_ds = cache(data=[c.as_dict() for c in self.val_cases], transform=val_transforms(cfg), **kw)
        self.generator = torch.Generator().manual_seed(cfg.training.seed)
        self.loader = DataLoader(self.train_ds, batch_size=cfg.training.batch_size, shuffle=True,
                                 num_workers=cfg.training.num_workers, collate_fn=list_data_collate,
                                 generator=self.generator, pin_memory=self.device.startswith("cuda"))

    # ----- model --------------------------------------------------------------------------------------------
    def setup_model(self) -> None:
        from monai.losses import DeepSupervisionLoss, DiceCELoss

        from medpipe.models import build_model

        cfg, t = self.cfg, self.cfg.training
        self.model = build_model(cfg).to(self.device)
        base = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, smooth_nr=1e-5, smooth_dr=1e-5)
        self.loss_fn: Any = DeepSupervisionLoss(base, weight_mode="exp") if self._deep_supervision else base
        if t.optimizer == "adamw":
            self.opt: torch.optim.Optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        else:
            self.opt = torch.optim.SGD(self.model.parameters(), lr=t.lr, momentum=0.99, nesterov=True,
                                       weight_decay=t.weight_decay)
        total = t.epochs
        if t.scheduler == "cosine":
            self.sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=total, eta_min=t.lr * 0.01)
        elif t.scheduler == "poly":
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda e: (1 - min(e, total - 1) / total) ** 0.9)
        else:
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda e: 1.0)

    @property
    def _deep_supervision(self) -> bool:
        return self.cfg.model.arch == "dynunet" and self.cfg.model.deep_supervision

    # ----- checkpoints --------------------------------------------------------------------------------------
    def save(self, name: str, epoch: int, best: tuple[int, float]) -> None:
        from medpipe.models import save_checkpoint

        save_checkpoint(
            self.run_dir / name, self.model, self.cfg, epoch=epoch, best_epoch=best[0], best_dice=best[1],
            optimizer=self.opt.state_dict(), scheduler=self.sched.state_dict(), scaler=self.scaler.state_dict(),
            rng=_rng_state(self.train_tf), loader_rng=self.generator.get_state(),
            resume_key=resume_key(self.cfg), data_fingerprint=self.fingerprint,
        )

    def restore(self, force: bool) -> tuple[int, tuple[int, float]]:
        from medpipe.models import load_checkpoint

        path = self.run_dir / "last.pt"
        ckpt = load_checkpoint(path, map_location=self.device)
        if not force and ckpt.get("resume_key") != resume_key(self.cfg):
            raise CheckpointError("the config differs from the run being resumed", path=path,
                                  hint="use the run's config.yaml, or --force to resume anyway")
        if not force and ckpt.get("data_fingerprint") != self.fingerprint:
            raise CheckpointError("the dataset differs from the run being resumed", path=path,
                                  hint="--force to resume anyway")
        self.model.load_state_dict(ckpt["state_dict"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"], self.train_tf)
        self.generator.set_state(ckpt["loader_rng"])
        return int(ckpt["epoch"]), (int(ckpt["best_epoch"]), float(ckpt["best_dice"]))

    # ----- loop ---------------------------------------------------------------------------------------------
    def _batches(self) -> Iterator[dict[str, Any]]:
        n = self.cfg.training.iterations_per_epoch
        if n <= 0:
            yield from self.loader
            return
        done = 0
        while True:
            for batch in self.loader:
                yield batch
                done += 1
                if done >= n:
                    return

    def train_epoch(self, epoch: int) -> float:
        self.model.train()
        steps = self.cfg.training.iterations_per_epoch or len(self.loader)
        losses = []
        for i, batch in enumerate(self._batches()):
            x = batch["image"].to(self.device, non_blocking=True)
            y = batch["label"].to(self.device, non_blocking=True)
            self.opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type="cuda", dtype=self.amp_dtype or torch.float16,
                                enabled=self.amp_dtype is not None):
                out = self.model(x)
                if self._deep_supervision:
                    out = list(torch.unbind(out, dim=1))
                loss = self.loss_fn(out, y)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 12.0)
            self.scaler.step(self.opt)
            self.scaler.update()
            losses.append(float(loss.detach()))
            self.emit(TrainEvent("step", epoch, self.cfg.training.epochs, i + 1, steps, losses[-1]))
        self.sched.step()
        return float(np.mean(losses)) if losses else float("nan")

    def validate(self) -> dict[str, float]:
        """Mean Dice per foreground label over the validation cases, in network space (sliding window)."""
        from monai.inferers import sliding_window_inference

        from medpipe.evaluate import score_arrays

        self.model.eval()
        inf = self.cfg.inference
        fg = {k: v for k, v in self.cfg.labels.items() if k != 0}
        per_label: dict[str, list[float]] = {name: [] for name in fg.values()}
        with torch.no_grad(), torch.autocast(device_type="cuda", dtype=self.amp_dtype or torch.float16,
                                             enabled=self.amp_dtype is not None):
            for item in self.val_ds:
                img = item["image"][None].to(self.device)
                logits = sliding_window_inference(img, inf.roi_size_vox, inf.sw_batch_size, self.model,
                                                  overlap=inf.overlap, mode=inf.blend)
                pred = logits[0].argmax(0).cpu().numpy()
                ref = np.asarray(item["label"][0]).round().astype(np.int32)
                rows = score_arrays(pred, ref, self.cfg.transforms.spacing_mm, fg, metrics=("dice",))
                for row in rows:
                    per_label[fg[row.label]].append(row.dice)
        return {name: float(np.nanmean(v)) if v else float("nan") for name, v in per_label.items()}

    def run(self, resume: bool = False, force: bool = False) -> TrainResult:
        cfg = self.cfg
        self.setup_data()
        self.setup_model()
        start, best, last_dice = 0, (0, -1.0), {}
        if resume:
            start, best = self.restore(force)
        write_text_atomic(self.run_dir / "config.yaml", dump_config(cfg))
        log = RunLog(self.run_dir, read_rows(self.run_dir / "metrics.csv") if resume else None)
        self.emit(TrainEvent("start", start, cfg.training.epochs, message=(
            f"{len(self.train_cases)} training / {len(self.val_cases)} validation cases on {self.device}"
            + (f", resuming after epoch {start}" if resume else ""))))
        try:
            for epoch in range(start + 1, cfg.training.epochs + 1):
                t0 = time.perf_counter()
                loss = self.train_epoch(epoch)
                row: dict[str, Any] = {"epoch": epoch, "train_loss": round(loss, 5),
                                       "lr": self.opt.param_groups[0]["lr"]}
                if epoch % cfg.training.val_every == 0 or epoch == cfg.training.epochs:
                    last_dice = self.validate()
                    mean = float(np.nanmean(list(last_dice.values())))
                    row.update({f"val_dice_{k}": round(v, 5) for k, v in last_dice.items()})
                    row["val_dice_mean"] = round(mean, 5)
                    if mean > best[1]:
                        best = (epoch, mean)
                        self.save("best.pt", epoch, best)
                    self.emit(TrainEvent("validation", epoch, cfg.training.epochs, dice=last_dice, loss=loss))
                row["seconds"] = round(time.perf_counter() - t0, 2)
                self.save("last.pt", epoch, best)
                log.add(row)
                self.emit(TrainEvent("epoch", epoch, cfg.training.epochs, loss=loss))
            if log.rows:
                log.plot()
        finally:
            log.close()
        self.emit(TrainEvent("done", cfg.training.epochs, cfg.training.epochs, dice=last_dice))
        return TrainResult(self.run_dir, cfg.training.epochs, best[0], best[1], last_dice)


def train(cfg: PipelineConfig, run_dir: Path, *, data_root: Path | None = None, epochs: int | None = None,
          device: str = "auto", resume: bool = False, force: bool = False,
          on_event: Callable[[TrainEvent], None] | None = None) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (CLI flags override the YAML: ``data_root``, ``epochs``)."""
    if data_root is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(Path(data_root).resolve())))
    if epochs is not None:
        cfg = cfg.with_overrides(training={"epochs": epochs})
    if resume and not (run_dir / "last.pt").is_file():
        raise CheckpointError("nothing to resume: no last.pt in the run folder", path=run_dir)
    if not resume and (run_dir / "last.pt").is_file():
        raise CheckpointError("run folder already holds a training run", path=run_dir,
                              hint="pass --resume to continue it, or choose a new --out")
    return Trainer(cfg, run_dir, device, on_event).run(resume=resume, force=force)

