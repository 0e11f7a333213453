"""The range of inputs a model was trained on (spacing along RAS, intensity percentiles per channel), stored in
its checkpoint, and the check of a new input against it.

A model trained on 1 mm synthetic phantoms that is given a 0.7 mm real CT with a different intensity range may
silently segment nothing; this check says so (in the sidecar and on screen) instead of staying silent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

TRAIN_RANGE_FORMAT = "medpipe-training-range/1"
#: Spacing outside [min / factor, max * factor] of the training cases is "far outside".
SPACING_FACTOR = 2.0
#: Intensities: an input whose 0.5-99.5 percentile span lies mostly outside the training span, or whose span
#: is this many times wider or narrower, is "far outside".
SPAN_FACTOR = 4.0
#: Cases read to compute the intensity percentiles (a sample of voxels from each).
MAX_CASES = 20
VOXELS_PER_CASE = 20000


@dataclass(frozen=True)
class ChannelRange:
    """Mean 0.5 and 99.5 intensity percentiles of one channel over the training cases."""

    p0_5: float
    p99_5: float

    def to_json(self) -> dict[str, float]:
        return {"p0_5": self.p0_5, "p99_5": self.p99_5}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChannelRange:
        return cls(float(d["p0_5"]), float(d["p99_5"]))


@dataclass(frozen=True)
class TrainingRange:
    """Spacing (mm, along R, A, S) and intensity range of the cases a model was trained on."""

    n_cases: int
    spacing_min_mm: tuple[float, float, float]
    spacing_max_mm: tuple[float, float, float]
    channels: dict[str, ChannelRange]
    format: str = TRAIN_RANGE_FORMAT

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "n_cases": self.n_cases, "spacing_min_mm": list(self.spacing_min_mm),
                "spacing_max_mm": list(self.spacing_max_mm),
                "channels": {k: v.to_json() for k, v in self.channels.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainingRange | None:
        """The record, or None for another format (an older checkpoint has none)."""
        if not isinstance(d, dict) or d.get("format") != TRAIN_RANGE_FORMAT:
            return None
        lo, hi = (tuple(float(x) for x in d[k]) for k in ("spacing_min_mm", "spacing_max_mm"))
        return cls(int(d["n_cases"]), (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2]),
                   {str(k): ChannelRange.from_json(v) for k, v in d["channels"].items()})


def ras_spacing(affine: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float, float]:
    """Voxel spacing reordered along the world axes R, A, S."""
    import nibabel as nib

    out = [0.0, 0.0, 0.0]
    for i, w in enumerate(nib.io_orientation(affine)[:, 0].astype(int)):
        out[w] = float(spacing[i])
    return out[0], out[1], out[2]


def _percentiles(values: np.ndarray, seed: int) -> tuple[float, float]:
    # sample positions first, then drop non-finite ones: a whole-scan isfinite mask and finite copy would cost
    # 5 bytes per voxel (1.3 GiB on a 512x512x1000 CT) for a 20 000-value estimate
    flat = values.reshape(-1)
    if flat.size > VOXELS_PER_CASE:
        picks = np.random.default_rng(seed).choice(flat.size, VOXELS_PER_CASE, replace=False)
        flat = flat[np.sort(picks)]
    flat = flat[np.isfinite(flat)]
    lo, hi = np.percentile(flat, [0.5, 99.5]) if flat.size else (0.0, 0.0)
    return float(lo), float(hi)


def training_range(images: list[tuple[Path, ...]], channels: tuple[str, ...]) -> TrainingRange:
    """The range of the training cases (``images``: each case's channel files); intensities from up to
    :data:`MAX_CASES` of them."""
    import nibabel as nib

    spacings, per_channel = [], {c: [] for c in channels}  # type: ignore[var-annotated]
    for k, files in enumerate(images):
        for ci, f in enumerate(files):
            img = cast(nib.Nifti1Image, nib.load(str(f)))
            if ci == 0:
                spacings.append(ras_spacing(img.affine, tuple(float(z) for z in img.header.get_zooms()[:3])))
            if k >= MAX_CASES:
                continue
            data = np.asarray(img.dataobj, dtype=np.float32)
            arrays = [data] if data.ndim == 3 else [data[..., j] for j in range(data.shape[3])]
            for j, a in enumerate(arrays):
                name = channels[min(ci + j, len(channels) - 1)]
                per_channel[name].append(_percentiles(a, k))
    sp = np.array(spacings, dtype=float)
    lo, hi = sp.min(axis=0), sp.max(axis=0)
    chans = {c: ChannelRange(round(float(np.mean([p[0] for p in v])), 3), round(float(np.mean([p[1] for p in v])), 3))
             for c, v in per_channel.items() if v}
    return TrainingRange(len(images), (float(lo[0]), float(lo[1]), float(lo[2])),
                         (float(hi[0]), float(hi[1]), float(hi[2])), chans)


def out_of_range(rng: TrainingRange, array: np.ndarray, affine: np.ndarray,
                 spacing: tuple[float, ...]) -> tuple[str, ...]:
    """Notices for an input (``array``: (C, I, J, K)) far outside the training range; empty when it fits."""
    notes: list[str] = []
    ras = ras_spacing(affine, spacing)
    for axis, s, lo, hi in zip("RAS", ras, rng.spacing_min_mm, rng.spacing_max_mm, strict=True):
        if s < lo / SPACING_FACTOR or s > hi * SPACING_FACTOR:
            notes.append(f"spacing {s:.3g} mm along {axis} is far outside the training cases' {lo:.3g}-{hi:.3g} mm")
    for (name, train), channel in zip(rng.channels.items(), array, strict=False):
        lo, hi = _percentiles(channel, 0)
        span, tspan = hi - lo, train.p99_5 - train.p0_5
        overlap = min(hi, train.p99_5) - max(lo, train.p0_5)
        if tspan > 0 and (span > SPAN_FACTOR * tspan or span * SPAN_FACTOR < tspan or overlap < 0.5 * min(span, tspan)):
            notes.append(f"{name} intensities {lo:.4g}..{hi:.4g} (0.5-99.5 percentiles) are far from the training "
                         f"cases' {train.p0_5:.4g}..{train.p99_5:.4g}")
    return tuple(notes)
