"""The training loop: AMP on CUDA, deep supervision, DDP, sliding-window validation, atomic checkpoints, resume.

The run folder holds ``config.yaml`` (resolved config), ``split.json`` (this run's train/val case ids),
``splits.json`` (all folds, for cross-validation), ``last.pt`` + ``previous.pt`` (every epoch), ``best.pt`` (best
mean validation Dice; for ``task: classification`` best validation ROC AUC), ``metrics.csv``,
``training_curve.png`` and ``tensorboard/`` (when tensorboard is installed). Under DDP only rank 0 writes any of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch.nn.parallel import DistributedDataParallel

from medpipe.config import PipelineConfig, dump_config
from medpipe.datasets import data_identity, preflight, select_split
from medpipe.datasets.classes import case_classes, load_task_dataset
from medpipe.errors import CheckpointError, ConfigError, DatasetError, OutputError, TrainingError
from medpipe.evaluation.evaluate import score_arrays
from medpipe.io.atomic import write_json_atomic, write_text_atomic
from medpipe.labels import Region, label_scores
from medpipe.models.checkpoint import load_checkpoint, save_checkpoint
from medpipe.models.factory import build_model, uses_deep_supervision
from medpipe.models.trainrange import training_range
from medpipe.runtime import short_hash
from medpipe.training.classify import ClassificationLoss, validate_classifier, validation_score
from medpipe.training.data import build_loaders
from medpipe.training.distributed import DistInfo, broadcast_object, gather_objects, mean_across_ranks
from medpipe.training.events import EpochStats, TrainEvent, TrainResult
from medpipe.training.losses import SegmentationLoss
from medpipe.training.resources import fit_cache, loader_workers
from medpipe.training.runlog import RunLog, read_rows
from medpipe.training.state import (
    STAGED_CHECKPOINT,
    case_identities,
    config_changes,
    dataset_changes,
    epoch_seed,
    pick_checkpoint,
    remove_stale_temporaries,
    resume_key,
    rng_state,
    rotate_in,
    seed_everything,
    set_determinism,
    set_rng_state,
)
from medpipe.training.volumes import volume_ranges


def lr_factor(cfg: PipelineConfig, epoch_index: int) -> float:
    """LR multiplier after ``epoch_index`` completed epochs: a pure function of the epoch and the run length,
    so a resumed (or extended) run follows the schedule of its own ``training.epochs``."""
    t = cfg.training
    total = max(1, t.epochs)
    e = min(epoch_index, total)
    if t.scheduler == "cosine":
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * e / total))
    if t.scheduler == "poly":
        return (1.0 - min(e, total - 1) / total) ** 0.9
    return 1.0


class Trainer:
    """One training run (one process of a DDP job). Library code: reports through ``on_event``, never prints."""

    def __init__(self, cfg: PipelineConfig, run_dir: Path, device: str, dist: DistInfo,
                 on_event: Callable[[TrainEvent], None] | None = None) -> None:
        self.cfg, self.run_dir, self.device, self.dist = cfg, run_dir, device, dist
        self.emit = on_event if (on_event is not None and dist.is_main) else (lambda e: None)
        cuda = device.startswith("cuda")
        set_determinism(cfg.training.deterministic, cuda)
        self.amp_dtype: torch.dtype | None = None
        if cfg.training.amp and cuda:
            want = cfg.training.amp_dtype
            bf16 = want == "bf16" or (want == "auto" and torch.cuda.is_bf16_supported())
            self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.notices: list[str] = []
        self.resuming = False

    # ----- data ---------------------------------------------------------------------------------------------
    def setup_data(self) -> None:

        cfg = self.cfg
        if not cfg.data.root:
            raise ConfigError("no dataset: set data.root in the config or pass --data DIR")
        ds = load_task_dataset(cfg)
        chosen = None
        if self.dist.is_main:  # rank 0 reads or writes the splits file; every rank trains on its split
            try:
                train, val, splits = select_split(
                    ds.cases, fold=cfg.data.fold, n_folds=cfg.data.n_folds, val_fraction=cfg.data.val_fraction,
                    seed=cfg.data.seed, splits_file=cfg.data.splits_file or None)
            except DatasetError as err:
                changed = dataset_changes(self.run_dir, case_identities(list(ds.cases))) if self.resuming else ""
                if not changed:
                    raise
                raise DatasetError(f"{err.message}; {changed}", path=err.path, hint=err.hint) from err
            chosen = ([c.case_id for c in train], [c.case_id for c in val], splits)
        train_ids, val_ids, splits = broadcast_object(chosen, self.dist)
        by_id = {c.case_id: c for c in ds.cases}
        self.train_cases, self.val_cases = [by_id[c] for c in train_ids], [by_id[c] for c in val_ids]
        cases = self.train_cases + self.val_cases
        self.fingerprint = data_identity(cases)
        self.targets: dict[str, int] | None = None
        if cfg.is_classification:  # case classes belong to the data: a changed label refuses a resume
            self.targets = broadcast_object(case_classes(cfg, cases) if self.dist.is_main else None, self.dist)
            self.fingerprint = short_hash({"images": self.fingerprint, "classes": self.targets})
        if cfg.data.fingerprint and cfg.data.fingerprint != data_identity(ds.cases):
            raise DatasetError(f"the dataset changed since it was planned (identity {data_identity(ds.cases)}, "
                               f"the plan recorded {cfg.data.fingerprint})", path=ds.root,
                               hint="run `medpipe plan` again, or clear data.fingerprint in the config")
        warnings: list[Any] = []
        epochs = cfg.training.epochs
        preflight(cases, cfg.labels, cfg.in_channels, ds.root, warnings,
                  on_case=lambda _c, i, n: self.emit(TrainEvent("check", 0, epochs, i, n)))
        self.notices += [f"dataset check: {w}" for w in warnings]
        self.volume_ranges: dict[str, list[float]] = {}
        if self.dist.is_main and not cfg.is_classification:
            self.volume_ranges = volume_ranges([c.label for c in self.train_cases if c.label], cfg.labels)
        self.case_identity = case_identities(cases)
        if self.dist.is_main and not self.resuming:  # a resume keeps the record of what the run began with
            write_json_atomic(self.run_dir / "split.json", {
                "fold": cfg.data.fold, "train": [c.case_id for c in self.train_cases],
                "val": [c.case_id for c in self.val_cases], "case_identity": self.case_identity,
                "dataset_warnings": [str(w) for w in warnings],
                **({"classes": self.targets} if self.targets is not None else {})})
            if splits is not None:
                write_json_atomic(self.run_dir / "splits.json", {"n_folds": cfg.data.n_folds, "seed": cfg.data.seed,
                                                                 "folds": splits})
        self.train_range = (training_range([c.images for c in self.train_cases], cfg.channels)
                            if self.dist.is_main else None)  # stored in checkpoints: infer warns far outside it
        t = cfg.training
        workers, note = loader_workers(t.num_workers, self.dist.world_size)
        fitted, cache_note = fit_cache(cfg.with_overrides(training={"num_workers": workers}), cases, self.run_dir)
        for n in (note, cache_note):
            if n:
                self.emit(TrainEvent("notice", 0, t.epochs, message=n))
        ft = fitted.training
        how = (f"on disk in {ft.cache_dir}" if ft.cache_dir else "in memory" if ft.cache else "")
        if how:
            self.emit(TrainEvent("phase", 0, t.epochs, message=(
                f"preprocessing and caching {len(cases)} cases {how} before the first step ...")))
        self.data = build_loaders(fitted, self.train_cases, self.val_cases, self.fingerprint, self.dist, self.device,
                                  self.notices,
                                  on_cached=lambda i, n: self.emit(TrainEvent("cache", 0, t.epochs, i, n)),
                                  targets=self.targets)

    # ----- model --------------------------------------------------------------------------------------------
    @property
    def deep_supervision(self) -> bool:

        return uses_deep_supervision(self.cfg)

    def setup_model(self) -> None:

        cfg, t = self.cfg, self.cfg.training
        seed_everything(t.seed)
        self.net = build_model(cfg).to(self.device)
        self.model: torch.nn.Module = self.net
        if self.dist.enabled:

            ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
            self.model = DistributedDataParallel(self.net, device_ids=ids)
        self.loss_fn: torch.nn.Module = (ClassificationLoss(cfg) if cfg.is_classification
                                         else SegmentationLoss(cfg, self.deep_supervision))
        if t.optimizer == "adamw":
            self.opt: torch.optim.Optimizer = torch.optim.AdamW(self.net.parameters(), lr=t.lr,
                                                                weight_decay=t.weight_decay)
        else:
            self.opt = torch.optim.SGD(self.net.parameters(), lr=t.lr, momentum=0.99, nesterov=True,
                                       weight_decay=t.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda e: lr_factor(self.cfg, e))

    # ----- checkpoints --------------------------------------------------------------------------------------
    def save(self, name: str, epoch: int, best: tuple[int, float]) -> None:
        """Rank 0: write a checkpoint atomically. A new ``last.pt`` is written completely (as ``next.pt``) before
        the old one becomes ``previous.pt``, so a failed write (disk full, file-size limit) keeps every good
        checkpoint and is reported with its path and errno."""

        if not self.dist.is_main:
            return
        dest = self.run_dir / name
        staged = self.run_dir / STAGED_CHECKPOINT if name == "last.pt" else dest
        try:
            save_checkpoint(
                staged, self.net, self.cfg, epoch=epoch, best_epoch=best[0], best_dice=best[1],
                optimizer=self.opt.state_dict(), scheduler=self.sched.state_dict(), scaler=self.scaler.state_dict(),
                rng=rng_state(), loader_rng=self.data.generator.get_state(), resume_key=resume_key(self.cfg),
                data_fingerprint=self.fingerprint, world_size=self.dist.world_size, device=self.device,
                training_range=self.train_range.to_json() if self.train_range is not None else {},
                label_volumes_ml=self.volume_ranges,
            )
        except OutputError as err:
            kept = [n for n in ("best.pt", "last.pt", "previous.pt") if (self.run_dir / n).is_file()]
            raise OutputError(f"checkpoint of epoch {epoch} not written: {err.message}; "
                              + (f"kept intact: {', '.join(kept)}" if kept else "no earlier checkpoint exists"),
                              path=dest, hint="free disk space (or raise the file-size limit), then --resume") from err
        if staged != dest:
            rotate_in(self.run_dir, staged)

    def restore(self, force: bool) -> tuple[int, tuple[int, float]]:
        """Load the newest usable checkpoint (rank 0 picks it, quarantining corrupt ones) into every rank."""
        chosen = None
        if self.dist.is_main:
            path, _, notices = pick_checkpoint(self.run_dir, "cpu")
            self.notices += notices
            chosen = path.name
        chosen = broadcast_object(chosen, self.dist)

        path = self.run_dir / str(chosen)
        ckpt = load_checkpoint(path, map_location=self.device)
        if not force and ckpt.get("resume_key") != resume_key(self.cfg):
            changed = config_changes(ckpt.get("config", {}), self.cfg)
            raise CheckpointError("the config differs from the run being resumed"
                                  + (f" ({'; '.join(changed[:5])})" if changed else ""), path=path,
                                  hint="use the run's config.yaml, or --force to resume anyway")
        if not force and ckpt.get("data_fingerprint") != self.fingerprint:
            data_changes = dataset_changes(self.run_dir, self.case_identity)
            raise CheckpointError(f"the dataset differs from the run being resumed (identity {self.fingerprint}, "
                                  f"the run recorded {ckpt.get('data_fingerprint')})"
                                  + (f"; {data_changes}" if data_changes else ""), path=path,
                                  hint="--force to resume anyway")
        # Only a forced resume gets here with another optimizer kind: its state cannot be taken over (SGD has no
        # use for Adam's moments, and fails on their param groups), so it starts fresh, said so. The scheduler's
        # state is its position only (the schedule itself is lr_factor of this config), so it always resumes.
        before = (ckpt.get("config") or {}).get("training", {}).get("optimizer", self.cfg.training.optimizer)
        fresh = before != self.cfg.training.optimizer
        try:
            self.net.load_state_dict(ckpt["state_dict"])
            if not fresh:
                self.opt.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"checkpoint does not fit this model ({str(err)[:200]})", path=path) from err
        self.sched.load_state_dict(ckpt["scheduler"])
        if fresh:
            for group, lr in zip(self.opt.param_groups, self.sched.get_last_lr(), strict=True):
                group["lr"] = lr  # where the schedule stands, not the initial learning rate
            self.notices.append(f"resumed with --force: optimizer {before} -> {self.cfg.training.optimizer}; its "
                                "state starts fresh (weights, epoch, schedule position and random state resume)")
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.data.generator.set_state(ckpt["loader_rng"])
        if chosen != "last.pt":
            self.notices.append(f"resuming from {chosen} (epoch {ckpt['epoch']})")
        return int(ckpt["epoch"]), (int(ckpt["best_epoch"]), float(ckpt["best_dice"]))

    # ----- loop ---------------------------------------------------------------------------------------------
    def seed_epoch(self, epoch: int) -> None:
        """Reseed every source of randomness from (seed, epoch, rank): the determinism policy."""
        s = epoch_seed(self.cfg.training.seed, epoch, self.dist.rank)
        seed_everything(s)
        self.data.train_tf.set_random_state(seed=s)
        self.data.generator.manual_seed(s)

    def _batches(self, epoch: int) -> Iterator[dict[str, Any]]:
        """One pass of the loader: the sampler's epoch holds ``iterations_per_epoch`` batches (or the dataset)."""
        self.data.sampler.set_epoch(epoch)
        yield from self.data.loader

    def steps_per_epoch(self) -> int:
        return len(self.data.loader)

    def train_epoch(self, epoch: int) -> EpochStats:
        self.model.train()
        self.seed_epoch(epoch)
        steps, losses = self.steps_per_epoch(), []
        wait = compute = 0.0
        cuda = self.device.startswith("cuda")
        t0 = time.perf_counter()
        for i, batch in enumerate(self._batches(epoch)):
            t1 = time.perf_counter()
            wait += t1 - t0
            x = batch["image"].to(self.device, non_blocking=True)
            y = batch["class" if self.cfg.is_classification else "label"].to(self.device, non_blocking=True)
            self.opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type="cuda", dtype=self.amp_dtype or torch.float16,
                                enabled=self.amp_dtype is not None):
                out = self.model(x)
                if self.deep_supervision:
                    out = list(torch.unbind(out, dim=1))
                loss = self.loss_fn(out, y)
            if not bool(torch.isfinite(loss.detach()).all()):
                self._stop_non_finite(epoch, i + 1, float(loss.detach()))
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), 12.0)
            self.scaler.step(self.opt)
            self.scaler.update()
            losses.append(float(loss.detach()))  # synchronises CUDA: compute time below is real
            if cuda:
                torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            compute += t0 - t1
            self.emit(TrainEvent("step", epoch, self.cfg.training.epochs, i + 1, steps, losses[-1]))
        self.sched.step()
        mean = float(np.mean(losses)) if losses else float("nan")
        return EpochStats(mean_across_ranks(mean, self.dist, self.device), len(losses), wait, compute)

    def _stop_non_finite(self, epoch: int, step: int, value: float) -> None:
        kept = self.run_dir / "last.pt"
        last = f"{kept} (epoch {epoch - 1}) is the last good checkpoint" if kept.is_file() else "no checkpoint yet"
        raise TrainingError(f"training loss became {value} in epoch {epoch}, step {step}: the run is stopped; {last}",
                            path=self.run_dir, hint="lower training.lr, or check the data with `medpipe dataset "
                            "check`; --resume continues from the last good checkpoint")

    def _scored(self) -> Any:

        if self.cfg.regions:
            return [Region(i + 1, name, tuple(v)) for i, (name, v) in enumerate(self.cfg.regions.items())]
        return {k: v for k, v in self.cfg.labels.items() if k != 0}

    def validate(self) -> dict[str, float]:
        """Mean Dice per foreground label (or region) over the validation cases, in network space; for
        classification ROC AUC and accuracy (:func:`medpipe.training.classify.validate_classifier`)."""
        if self.cfg.is_classification:
            n = self.cfg.training.epochs
            return validate_classifier(self.net, self.data.val_ds, self.cfg, self.device, self.dist, self.amp_dtype,
                                       lambda i, k: self.emit(TrainEvent("val_case", 0, n, i, k)))

        self.net.eval()
        inf, scored = self.cfg.inference, self._scored()
        names = [r.name for r in scored] if isinstance(scored, list) else list(scored.values())
        per_name: dict[str, list[float]] = {n: [] for n in names}
        with torch.no_grad(), torch.autocast(device_type="cuda", dtype=self.amp_dtype or torch.float16,
                                             enabled=self.amp_dtype is not None):
            n_val = len(self.data.val_ds)
            for i_val, item in enumerate(self.data.val_ds):
                img = item["image"][None].to(self.device)
                logits = sliding_window_inference(img, inf.roi_size_vox, inf.sw_batch_size, self.net,
                                                  overlap=inf.overlap, mode=inf.blend)
                pred = label_scores(logits[0], self.cfg).argmax(0).cpu().numpy()
                ref = np.asarray(item["label"][0]).round().astype(np.int32)
                for name, row in zip(names, score_arrays(pred, ref, self.cfg.transforms.spacing_mm, scored),
                                     strict=True):
                    per_name[name].append(float("nan") if row.dice is None else float(row.dice))
                self.emit(TrainEvent("val_case", 0, self.cfg.training.epochs, i_val + 1, n_val))
        merged: dict[str, list[float]] = {n: [] for n in names}
        for part in gather_objects(per_name, self.dist):
            for n, v in part.items():
                merged[n] += v
        return {n: float(np.nanmean(v)) if v and not np.all(np.isnan(v)) else float("nan") for n, v in merged.items()}

    def run(self, resume: bool = False, force: bool = False) -> TrainResult:
        cfg = self.cfg
        self.resuming = resume
        if self.dist.is_main:
            remove_stale_temporaries(self.run_dir)
            (self.run_dir / STAGED_CHECKPOINT).unlink(missing_ok=True)
        self.setup_data()
        self.setup_model()
        start, best, last_dice = 0, (0, -1.0), {}
        if resume:
            start, best = self.restore(force)
        log = None
        if self.dist.is_main:
            write_text_atomic(self.run_dir / "config.yaml", dump_config(cfg))
            rows = [r for r in read_rows(self.run_dir / "metrics.csv") if r["epoch"] <= start] if resume else None
            log = RunLog(self.run_dir, rows)
            if not log.tensorboard:
                self.notices.append("TensorBoard logs off: `pip install tensorboard` to enable them")
        for note in self.notices:
            self.emit(TrainEvent("notice", start, cfg.training.epochs, message=note))
        world = f" x {self.dist.world_size} processes" if self.dist.enabled else ""
        self.emit(TrainEvent("start", start, cfg.training.epochs, message=(
            f"{len(self.train_cases)} training / {len(self.val_cases)} validation cases on {self.device}{world}"
            + (f", fold {cfg.data.fold} of {cfg.data.n_folds}" if cfg.data.fold >= 0 else "")
            + (f", resuming after epoch {start}" if resume else ""))))
        try:
            for epoch in range(start + 1, cfg.training.epochs + 1):
                t0 = time.perf_counter()
                stats = self.train_epoch(epoch)
                row: dict[str, Any] = {"epoch": epoch, "train_loss": round(stats.loss, 5),
                                       "lr": self.opt.param_groups[0]["lr"],
                                       "data_wait_s": round(stats.data_wait_s, 3),
                                       "compute_s": round(stats.compute_s, 3)}
                if epoch % cfg.training.val_every == 0 or epoch == cfg.training.epochs:
                    last_dice = self.validate()
                    if cfg.is_classification:
                        mean = validation_score(last_dice)
                        row.update({f"val_{k}": round(v, 5) for k, v in last_dice.items()})
                    else:
                        finite = [v for v in last_dice.values() if not math.isnan(v)]
                        mean = float(np.mean(finite)) if finite else float("nan")
                        row.update({f"val_dice_{k}": round(v, 5) for k, v in last_dice.items()})
                        row["val_dice_mean"] = round(mean, 5)
                    if mean > best[1]:
                        best = (epoch, mean)
                        self.save("best.pt", epoch, best)
                    self.emit(TrainEvent("validation", epoch, cfg.training.epochs, dice=last_dice, loss=stats.loss))
                row["seconds"] = round(time.perf_counter() - t0, 2)
                if log is not None:
                    log.add(row)  # before last.pt: a crash in between replays this epoch and rewrites the row
                self.save("last.pt", epoch, best)
                self.emit(TrainEvent("epoch", epoch, cfg.training.epochs, loss=stats.loss))
            if log is not None and log.rows:
                log.plot()
        finally:
            if log is not None:
                log.close()
        self.emit(TrainEvent("done", cfg.training.epochs, cfg.training.epochs, dice=last_dice))
        return TrainResult(self.run_dir, cfg.training.epochs, best[0], best[1], last_dice)
