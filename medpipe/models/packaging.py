"""``medpipe package``: medpipe run folders (one per fold, or one folder with ``fold_*/`` subfolders) -> a package.

The manifest is built from the checkpoint's stored config (never from the YAML beside it), the weights are
re-saved as safetensors, and the training summary / validation metrics come from the run folder (``split.json``,
``metrics.csv``, the checkpoint's best epoch and Dice).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from torch import nn

from medpipe.config import PipelineConfig
from medpipe.errors import CheckpointError
from medpipe.models.checkpoint import config_of, load_checkpoint
from medpipe.models.factory import build_network, network_spec
from medpipe.models.manifest import (
    Architecture,
    Channel,
    Fold,
    Label,
    Manifest,
    Normalisation,
    Output,
    Preprocessing,
    Region,
    SlidingWindow,
    default_color,
)
from medpipe.models.onnx import export_onnx, verify_onnx
from medpipe.models.package import safetensors_bytes, write_package
from medpipe.runtime import versions


@dataclass(frozen=True)
class PackageResult:
    """What ``medpipe package`` wrote: the package path, its manifest, and the ONNX checks (if any)."""

    path: Path
    manifest: Manifest
    onnx_checks: tuple[Any, ...] = ()


def find_fold_runs(run_dirs: list[Path]) -> list[tuple[int, Path]]:
    """(fold, checkpoint) for every run: a run folder (``best.pt``, else ``last.pt``), a checkpoint file, or a
    folder of ``fold_<k>/`` run folders. A run's fold is its ``fold_<k>`` name, else the position given."""
    found: list[tuple[int | None, Path]] = []
    for run in run_dirs:
        subs = sorted(p for p in run.glob("fold_*") if p.is_dir()) if run.is_dir() else []
        if subs and not any((run / n).is_file() for n in ("best.pt", "last.pt")):
            found += [(_fold_number(p), _checkpoint_of(p)) for p in subs]
        else:
            found.append((_fold_number(run), _checkpoint_of(run)))
    folds = [f if f is not None else i for i, (f, _) in enumerate(found)]
    if len(set(folds)) != len(folds):
        raise CheckpointError(f"two runs give the same fold number ({folds})", path=", ".join(map(str, run_dirs)))
    return [(f, p) for f, (_, p) in zip(folds, found, strict=True)]


def _checkpoint_of(run: Path) -> Path:
    if run.is_file():
        return run
    for name in ("best.pt", "last.pt"):
        if (run / name).is_file():
            return run / name
    raise CheckpointError("no checkpoint (best.pt or last.pt) and no fold_*/ run folders", path=run)


def _fold_number(path: Path) -> int | None:
    m = re.fullmatch(r"fold_?(\d+)", path.name)
    return int(m.group(1)) if m else None


def _comparable(cfg: PipelineConfig) -> dict[str, Any]:
    """What must agree between folds of one package: everything but the data split and training schedule."""
    d = cfg.to_dict()
    return {k: v for k, v in d.items() if k not in ("data", "training")}


def manifest_from_config(cfg: PipelineConfig, folds: list[Fold], training: dict[str, Any], licence: str,
                         name: str, software: dict[str, str]) -> Manifest:
    """The manifest of a medpipe-trained model (``files`` is filled in when the package is written)."""
    arch, args, slice_wise = network_spec(cfg)
    t = cfg.transforms
    norm_params = {"window": list(t.hu_window), "range": [0.0, 1.0], "clip": True} if t.intensity == "ct_window" else {}
    config = cfg.to_dict()
    config["data"] = {k: v for k, v in config["data"].items() if k not in ("root", "splits_file")}  # no local paths
    config["training"] = {k: v for k, v in config["training"].items() if k != "cache_dir"}
    return Manifest(
        name=name, architecture=Architecture(arch, args, slice_wise),
        channels=tuple(Channel(i, c, cfg.modality) for i, c in enumerate(cfg.channels)),
        preprocessing=Preprocessing(
            kind="medpipe", orientation=t.orientation, target_spacing_mm=tuple(t.spacing_mm),
            normalisation=tuple(Normalisation(i, t.intensity, norm_params) for i in range(cfg.in_channels)),
            crop_foreground=t.crop_foreground, config=config,
        ),
        sliding_window=SlidingWindow(tuple(cfg.inference.roi_size_vox), cfg.inference.overlap, cfg.inference.blend,
                                     cfg.inference.sw_batch_size),
        output=Output("sigmoid" if cfg.regions else "softmax",
                      (0, 1, 2) if t.augment and t.flip_prob > 0 else ()),
        labels=tuple(Label(v, n, default_color(v)) for v, n in sorted(cfg.labels.items())),
        regions=tuple(Region(n, tuple(v)) for n, v in cfg.regions.items()),
        postprocessing={"keep_largest": list(cfg.inference.keep_largest)} if cfg.inference.keep_largest else {},
        folds=tuple(folds), files=(), training=training, licence=licence, software=software,
        source={"kind": "medpipe-run"},
    )


def _metrics(run_dir: Path, ckpt: dict[str, Any]) -> dict[str, float]:
    """Validation metrics of the checkpoint's best epoch (``metrics.csv`` row), else the checkpoint's own."""
    out: dict[str, float] = {}
    if "best_dice" in ckpt:
        out["best_val_dice_mean"] = round(float(ckpt["best_dice"]), 5)
        out["best_epoch"] = int(ckpt.get("best_epoch", -1))
    path = run_dir / "metrics.csv"
    if path.is_file():
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        best = [r for r in rows if str(r.get("epoch")) == str(out.get("best_epoch"))]
        for key, value in (best[0] if best else {}).items():
            if key.startswith("val_dice") and value not in ("", None):
                out[key] = round(float(value), 5)
    return out


def _training_summary(cfg: PipelineConfig, runs: list[tuple[int, Path, dict[str, Any]]]) -> dict[str, Any]:
    per_fold = []
    for fold, ckpt_path, ckpt in runs:
        split_path = ckpt_path.parent / "split.json"
        split = json.loads(split_path.read_text()) if split_path.is_file() else {}
        per_fold.append({"fold": fold, "n_train": len(split.get("train", [])), "n_val": len(split.get("val", [])),
                         "epochs_trained": int(ckpt.get("epoch", 0)),
                         "data_fingerprint": str(ckpt.get("data_fingerprint", "") or "")})
    return {"pipeline": cfg.name, "dataset_format": cfg.data.format, "n_folds": cfg.data.n_folds,
            "epochs": cfg.training.epochs, "folds": per_fold}


def build_package(run_dirs: list[Path], dest: Path, *, onnx: bool = False, licence: str = "unspecified",
                  name: str | None = None) -> PackageResult:
    """Package medpipe runs (one per fold) into ``dest`` (``.zip``, or a folder for any other name)."""

    fold_runs = find_fold_runs(run_dirs)
    loaded: list[tuple[int, Path, dict[str, Any]]] = [(f, p, load_checkpoint(p)) for f, p in fold_runs]
    cfg0 = config_of(loaded[0][2], loaded[0][1])
    files: dict[str, bytes] = {}
    folds: list[Fold] = []
    checks: list[Any] = []
    for fold, path, ckpt in loaded:
        cfg = config_of(ckpt, path)
        if _comparable(cfg) != _comparable(cfg0):
            raise CheckpointError(f"fold {fold} was trained with another model or preprocessing than fold "
                                  f"{loaded[0][0]} ({loaded[0][1]})", path=path)
        net = _network(cfg, ckpt, path)
        weights = f"weights/fold_{fold}.safetensors"
        files[weights] = safetensors_bytes(net)
        onnx_name = None
        if onnx:
            onnx_name = f"onnx/fold_{fold}.onnx"
            files[onnx_name], check = _onnx_for(net, cfg, fold, path)
            checks.append(check)
        folds.append(Fold(fold, weights, onnx_name, _metrics(path.parent, ckpt)))
    software = versions()
    software["safetensors"] = _version("safetensors")
    if onnx:
        software["onnx"], software["onnxruntime"] = _version("onnx"), _version("onnxruntime")
    manifest = manifest_from_config(cfg0, folds, _training_summary(cfg0, loaded), licence, name or cfg0.name,
                                    software)
    final = write_package(dest, manifest, files)
    return PackageResult(dest, final, tuple(checks))


def _network(cfg: PipelineConfig, ckpt: dict[str, Any], path: Path) -> nn.Module:
    arch, args, slice_wise = network_spec(cfg)
    net = build_network(arch, args, slice_wise)
    try:
        net.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"weights do not fit the stored architecture: {str(err)[:300]}", path=path) from err
    return net.eval()


def _onnx_for(net: nn.Module, cfg: PipelineConfig, fold: int, path: Path) -> tuple[bytes, Any]:

    patch = tuple(cfg.inference.roi_size_vox)
    data = export_onnx(net, cfg.in_channels, patch)
    check = verify_onnx(net, data, fold, cfg.in_channels, patch)
    if not check.ok:
        raise CheckpointError(f"fold {fold}: ONNX export disagrees with PyTorch on a test patch {check.patch_shape}: "
                              f"max |diff| {check.max_abs_diff:.3g} > {check.tolerance:g}", path=path,
                              hint="package without --onnx")
    return data, check


def _version(module: str) -> str:

    try:
        return version(module)
    except PackageNotFoundError:
        return "not installed"
