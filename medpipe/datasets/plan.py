"""Automatic configuration from a dataset fingerprint (nnU-Net's "plans"), written as an editable pipeline YAML.

Heuristics (docs/training.md explains each):

- target spacing: the median spacing per axis; for anisotropic data (coarsest / finest > 3) the coarse axis
  takes the 10th percentile instead (keeps more slices, as nnU-Net does);
- patch size: starts as a cube in millimetres holding 256³ voxels, clipped to the median image size at the
  target spacing, then shrunk (largest axis relative to the median image first) until the estimated memory of a
  batch of 2 fits the GPU budget; each axis a multiple of the network's total stride along it;
- network: DynUNet with residual blocks and deep supervision; strides/kernels from
  :func:`medpipe.models.topology.dynunet_topology` (no pooling along an axis that is > 2x coarser than the finest, until
  it has caught up), pooling until the bottleneck is 4-8 voxels, at most 5 times; filters 32, 64, ... up to 320;
- batch size: 2, raised while memory allows and one batch covers at most 5 % of the dataset's voxels;
- normalisation: CT -> clip to the 0.5-99.5 percentiles of foreground HU and scale to [0, 1] (nnU-Net's CT scheme
  up to an affine map); MR -> per-image z-score over non-zero voxels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.config import PipelineConfig, config_from_dict, dump_config
from medpipe.datasets import check_dataset, save_fingerprint
from medpipe.datasets.fingerprint import Fingerprint
from medpipe.datasets.layouts import raise_for
from medpipe.errors import DatasetError
from medpipe.io.atomic import write_text_atomic
from medpipe.models.topology import dynunet_topology

#: Bytes per activation value (AMP keeps some tensors in fp32) and activations kept per level for backward.
BYTES_PER_VALUE_AMP = 3.0
ACTIVATIONS_PER_LEVEL = 18.0
#: CUDA context, cuDNN workspaces and allocator slack (GB).
VRAM_OVERHEAD_GB = 1.0
MAX_POOLINGS = 5
MIN_BOTTLENECK_VOX = 4
BASE_FILTERS, MAX_FILTERS = 32, 320
MAX_BATCH_FRACTION = 0.05


@dataclass(frozen=True)
class Plan:
    """A planned configuration, the reasoning behind it, and the memory estimate of one training step."""

    config: PipelineConfig
    notes: list[str] = field(default_factory=list)
    estimated_vram_gb: float = 0.0


def _filters(depth: int) -> list[int]:
    return [min(BASE_FILTERS * 2**i, MAX_FILTERS) for i in range(depth)]


def topology(patch: list[int], spacing: list[float]) -> tuple[int, list[list[int]], list[list[int]]]:
    """(depth, kernels, strides) for a patch: pool while some axis keeps >= 2x the bottleneck minimum."""
    depth = 1 + min(MAX_POOLINGS, max(2, math.floor(math.log2(max(patch) / MIN_BOTTLENECK_VOX))))
    kernels, strides = dynunet_topology(tuple(patch), tuple(spacing), depth)
    while depth > 3 and all(s == 1 for s in strides[-1]):  # the last level would not pool: drop it (MONAI needs 3)
        depth -= 1
        kernels, strides = dynunet_topology(tuple(patch), tuple(spacing), depth)
    return depth, kernels, strides


def _total_stride(strides: list[list[int]]) -> list[int]:
    return [int(np.prod([s[a] for s in strides])) for a in range(3)]


def estimate_vram_gb(patch: list[int], batch: int, strides: list[list[int]], filters: list[int], in_ch: int,
                     out_ch: int, amp: bool = True) -> float:
    """Rough training-step memory (GB): stored activations of every level (encoder + decoder + deep supervision)
    plus weights, gradients and two Adam/SGD-momentum buffers, plus a fixed overhead."""
    vox = float(np.prod(patch))
    values = 0.0
    for level, f in enumerate(filters):
        vox /= float(np.prod(strides[level]))
        values += vox * f
    bytes_per = BYTES_PER_VALUE_AMP if amp else 4.0
    act = batch * values * ACTIVATIONS_PER_LEVEL * bytes_per
    act += batch * float(np.prod(patch)) * (in_ch + 2 * out_ch) * 4.0
    params = sum(27 * a * b * 2 for a, b in zip([in_ch, *filters[:-1]], filters, strict=True))
    return VRAM_OVERHEAD_GB + (act + params * 16.0) / 1e9


def _target_spacing(fp: Fingerprint, notes: list[str]) -> list[float]:
    if fp.spacing_mm is None:
        raise DatasetError("the fingerprint holds no spacing statistics; run `medpipe dataset check` first")
    med = [float(v) for v in fp.spacing_mm.median]
    p10 = [float(v) for v in fp.spacing_mm.p10]
    target = list(med)
    worst = int(np.argmax(med))
    if max(med) / min(med) > 3.0:
        others = [med[a] for a in range(3) if a != worst]
        target[worst] = max(p10[worst], max(others))
    if target[worst] != med[worst]:
        notes.append(f"anisotropic data: axis {'RAS'[worst]} spacing {target[worst]:.3g} mm (10th percentile, "
                     f"median {med[worst]:.3g} mm)")
    notes.append(f"target spacing {tuple(round(t, 4) for t in target)} mm (median per RAS axis)")
    return target


def _median_shape(fp: Fingerprint, target: list[float]) -> list[int]:
    shapes = [np.asarray(c.shape_ras) * np.asarray(c.spacing_ras_mm) / np.asarray(target) for c in fp.cases]
    return [max(1, round(v)) for v in np.median(np.array(shapes), axis=0)]


def _fit_patch(median_shape: list[int], target: list[float], budget: float, in_ch: int,
               out_ch: int) -> tuple[list[int], int, list[list[int]], list[list[int]], float]:
    inv = 1.0 / np.asarray(target)
    patch = inv * (256.0**3 / float(np.prod(inv))) ** (1 / 3)
    patch = [max(8, min(round(p), s)) for p, s in zip(patch, median_shape, strict=True)]
    while True:
        depth, kernels, strides = topology(patch, target)
        div = _total_stride(strides)
        fitted = [max(d, (p // d) * d) for p, d in zip(patch, div, strict=True)]
        if topology(fitted, target) != (depth, kernels, strides):  # rounding changed the topology: settle it
            patch = fitted
            continue
        mem = estimate_vram_gb(fitted, 2, strides, _filters(depth), in_ch, out_ch)
        if mem <= budget or max(fitted) <= 16:
            return fitted, depth, kernels, strides, mem
        rel = [p / s for p, s in zip(fitted, median_shape, strict=True)]
        axis = int(np.argmax(rel))
        patch = list(fitted)
        patch[axis] = max(8, fitted[axis] - div[axis])


#: nnU-Net's cross-validation: 5 folds when there are cases enough.
PLAN_FOLDS = 5


def plan_split(n_labelled: int, notes: list[str]) -> dict[str, Any]:
    """The ``data`` split keys a dataset of ``n_labelled`` cases can train with: 5 folds from 5 cases, one fold per
    case (leave-one-out) for 3-4 cases, a hold-out split (fold -1, one validation case) for 2; fewer is refused."""
    if n_labelled < 2:
        raise DatasetError(f"{n_labelled} labelled case(s): training needs at least 2 (one to train, one to "
                           "validate)")
    if n_labelled >= PLAN_FOLDS:
        return {"fold": 0, "n_folds": PLAN_FOLDS}
    if n_labelled >= 3:
        notes.append(f"{n_labelled} labelled cases: {n_labelled}-fold cross-validation (one validation case per "
                     f"fold) instead of {PLAN_FOLDS} folds, which would need {PLAN_FOLDS} cases")
        return {"fold": 0, "n_folds": n_labelled}
    notes.append(f"{n_labelled} labelled cases: a hold-out split (fold -1: one training, one validation case) "
                 f"instead of {PLAN_FOLDS}-fold cross-validation, which would need {PLAN_FOLDS} cases")
    return {"fold": -1, "n_folds": PLAN_FOLDS, "val_fraction": 0.5}


def plan_from_fingerprint(fp: Fingerprint, *, gpu_mem_gb: float = 8.0, name: str = "") -> Plan:
    """A DynUNet pipeline config for the fingerprinted dataset that fits ``gpu_mem_gb`` of GPU memory."""
    if not fp.cases:
        raise DatasetError("the fingerprint holds no readable cases; run `medpipe dataset check` first")
    notes: list[str] = []
    ds = fp.dataset
    channels = list(ds.channels)
    labels = dict(ds.labels)
    unseen = [v for v in labels if v != 0 and (fp.classes[v].voxels if v in fp.classes else 0) == 0]
    regions = {k: list(v) for k, v in ds.regions.items()}
    if unseen and not regions:
        notes.append(f"labels {unseen} ({', '.join(labels[v] for v in unseen)}) occur in no case: left out")
        labels = {k: v for k, v in labels.items() if k not in unseen}
    out_ch = len(regions) if regions else max(labels) + 1
    target = _target_spacing(fp, notes)
    median_shape = _median_shape(fp, target)
    patch, depth, _kernels, strides, mem = _fit_patch(median_shape, target, gpu_mem_gb, len(channels), out_ch)
    notes.append(f"median image {median_shape} voxels at target spacing; patch {patch} "
                 f"({depth} levels, strides {strides[1:]})")
    batch = 2
    total_vox = float(np.sum([np.prod(np.asarray(c.shape_ras) * np.asarray(c.spacing_ras_mm) /
                                      np.asarray(target)) for c in fp.cases]))
    max_batch = max(2, int(MAX_BATCH_FRACTION * total_vox / float(np.prod(patch))))
    filters = _filters(depth)
    while batch < max_batch and estimate_vram_gb(patch, batch + 1, strides, filters, len(channels),
                                                 out_ch) <= gpu_mem_gb:
        batch += 1
    mem = estimate_vram_gb(patch, batch, strides, filters, len(channels), out_ch)
    notes.append(f"batch {batch} patches (~{mem:.1f} GB estimated of {gpu_mem_gb:g} GB; at most "
                 f"{MAX_BATCH_FRACTION:.0%} of the dataset's voxels per batch)")
    modality = fp.modality
    intensity: dict[str, Any] = {"intensity": "zscore_nonzero", "crop_foreground": True}
    if modality == "CT":
        stats: dict[str, float] = next(iter(fp.intensity_foreground.values()), {})
        lo, hi = float(stats.get("p0_5", -1000.0)), float(stats.get("p99_5", 1000.0))
        if hi <= lo:
            hi = lo + 1.0
        intensity = {"intensity": "ct_window", "hu_window": [round(lo, 1), round(hi, 1)], "crop_foreground": False}
        notes.append(f"CT: clip to foreground 0.5-99.5 percentiles [{lo:.0f}, {hi:.0f}] HU, scale to [0, 1]")
    else:
        notes.append("MR: per-channel z-score over non-zero voxels, crop to the non-zero box")
    samples = 2 if batch % 2 == 0 else 1
    split = plan_split(sum(bool(c.label_voxels) for c in fp.cases) or len(fp.cases), notes)
    raw: dict[str, Any] = {
        "name": name or f"plan-{Path(ds.root).name}",
        "modality": modality,
        "channels": channels,
        "labels": labels,
        "regions": regions,
        "data": {"root": ds.root, "format": ds.layout, "fingerprint": fp.identity, **split},
        "transforms": {"orientation": "RAS", "spacing_mm": [round(t, 5) for t in target], **intensity,
                       "patch_size_vox": patch, "samples_per_case": samples, "pos_fraction": 0.67,
                       "augment": True},
        "model": {"arch": "dynunet", "channels": filters, "strides": [2] * (depth - 1), "num_res_units": 1,
                  "norm": "instance", "deep_supervision": depth >= 3},
        "training": {"epochs": 1000, "iterations_per_epoch": 250, "batch_size": batch // samples, "lr": 0.01,
                     "weight_decay": 3e-5, "optimizer": "sgd", "scheduler": "poly", "val_every": 25, "amp": True,
                     "num_workers": "auto", "cache": True, "seed": 0},
        "inference": {"roi_size_vox": patch, "overlap": 0.5, "sw_batch_size": 2, "blend": "gaussian",
                      "amp": True},
    }
    return Plan(config_from_dict(raw, source="<plan>"), notes, mem)


def render_plan_yaml(plan: Plan, fingerprint_path: Path | None = None) -> str:
    """The plan as a pipeline YAML with its reasoning as a comment header."""
    head = ["# medpipe plan: generated from the dataset fingerprint; edit freely, then `medpipe train` it."]
    if fingerprint_path is not None:
        head.append(f"# fingerprint: {fingerprint_path}")
    head += [f"# - {n}" for n in plan.notes]
    data = plan.config.data
    split = (f"fold 0 of {data.n_folds} (--fold K for the others)" if data.fold >= 0
             else "a hold-out split (fold -1)")
    head.append("# training follows nnU-Net: SGD lr 0.01 (Nesterov 0.99) poly decay, 1000 epochs x 250 iterations, "
                f"deep supervision, {split}")
    return "\n".join(head) + "\n" + dump_config(plan.config)


def plan_dataset(root: str | Path, out: str | Path, *, fmt: str = "auto", gpu_mem_gb: float = 8.0) -> Plan:
    """Check the dataset (refusing errors), save ``<out stem>.fingerprint.json`` beside ``out`` and write the
    plan YAML to ``out``."""
    report = check_dataset(Path(root).resolve(), fmt)
    raise_for(report.issues, "in the dataset (see `medpipe dataset check`)", report.dataset.root)
    out = Path(out)
    fp_path = out.with_name(out.stem + ".fingerprint.json")
    plan = plan_from_fingerprint(report.fingerprint, gpu_mem_gb=gpu_mem_gb)
    save_fingerprint(report, fp_path)
    write_text_atomic(out, render_plan_yaml(plan, fp_path))
    return plan
