"""nnU-Net v2 preprocessing and export geometry, reimplemented with numpy/scipy (no nnunetv2 import).

The order is nnU-Net's: read (C, Z, Y, X) in SimpleITK axis order -> transpose_forward -> crop to the non-zero
box -> normalise per channel -> resample to the plans' spacing. Export runs the inverse: resample the logits back
to the cropped shape -> labels -> paste into the box -> transpose_backward. Every step uses the same arithmetic
(float32 data, float64 spline interpolation with edge mode and per-image clipping, nearest along the low-resolution
axis when spacing is anisotropic) so that the network sees the same numbers as under nnU-Net.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from medpipe.errors import InputError

if TYPE_CHECKING:
    from medpipe.models.importers.nnunet_record import NnunetRecord

#: nnU-Net's ANISO_THRESHOLD: spacing ratios above this resample the low-resolution axis separately.
ANISOTROPY_THRESHOLD = 3.0


@dataclass(frozen=True)
class CaseGeometry:
    """What export needs to undo preprocessing; all shapes in the transposed (network) axis order."""

    spacing_transposed: tuple[float, ...]
    shape_before_cropping: tuple[int, ...]
    bbox: tuple[tuple[int, int], ...]
    shape_after_cropping: tuple[int, ...]
    shape_resampled: tuple[int, ...]


def nonzero_box(data: np.ndarray) -> tuple[tuple[tuple[int, int], ...], np.ndarray]:
    """Half-open box of the hole-filled mask of voxels non-zero in any channel of (C, ...) ``data``, and the mask."""
    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    mask = ndimage.binary_fill_holes(mask)
    box: list[tuple[int, int]] = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append((int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, int(mask.shape[axis])))
    return tuple(box), mask


def new_shape_for(old_shape: Sequence[int], old_spacing: Sequence[float],
                  new_spacing: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's shape rule: round(old_shape * old_spacing / new_spacing) per axis (half to even)."""
    return tuple(int(round(float(s) / float(t) * int(n)))  # noqa: RUF046
                 for s, t, n in zip(old_spacing, new_spacing, old_shape, strict=True))


def separate_axis(current: Sequence[float], new: Sequence[float], force: bool | None,
                  threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The low-resolution axis to resample on its own (nearest or linear), or None for one 3D interpolation."""
    def lowres(spacing: Sequence[float]) -> np.ndarray:
        arr = np.asarray(spacing, dtype=float)
        return np.where(max(spacing) / arr == 1)[0]

    def aniso(spacing: Sequence[float]) -> bool:
        return bool(np.max(spacing) / np.min(spacing) > threshold)

    if force is not None:
        axes = lowres(current) if force else None
    elif aniso(current):
        axes = lowres(current)
    elif aniso(new):
        axes = lowres(new)
    else:
        axes = None
    if axes is None or len(axes) != 1:
        return None
    return int(axes[0])


def _resize_edge(image: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Spline resize of one float64 image with edge padding, grid-aligned pixel centres, clipped to the input's
    range (scikit-image's ``resize(mode="edge", anti_aliasing=False)`` semantics)."""
    factors = [1 / (i / o) for i, o in zip(image.shape, shape, strict=True)]
    out = ndimage.zoom(image, factors, order=order, mode="nearest", grid_mode=True)
    if order > 0:
        np.clip(out, image.min(), image.max(), out=out)
    return out


def _pick_along(data: np.ndarray, axis: int, new_len: int, order: int) -> np.ndarray:
    """Resample ``data`` along ``axis`` only (pixel-centre mapping, edge mode): nearest for order 0."""
    old_len = data.shape[axis]
    coords = (old_len / new_len) * (np.arange(new_len) + 0.5) - 0.5
    if order == 0:
        idx = ndimage.map_coordinates(np.arange(old_len, dtype=float), coords[None], order=0, mode="nearest")
        return np.take(data, idx.astype(np.int64), axis=axis)
    moved = np.moveaxis(data, axis, 0)
    grid = np.meshgrid(coords, *[np.arange(s, dtype=float) for s in moved.shape[1:]], indexing="ij")
    out = ndimage.map_coordinates(moved, np.stack(grid), order=order, mode="nearest")
    return np.moveaxis(out, 0, axis)


def resample(data: np.ndarray, new_shape: Sequence[int], current_spacing: Sequence[float],
             new_spacing: Sequence[float], order: int, order_z: int, force_separate_z: bool | None,
             out_dtype: np.dtype | None = None) -> np.ndarray:
    """Resample (C, ...) ``data`` to ``new_shape`` the way nnU-Net resamples images and probabilities.

    Anisotropic data: each slice across the low-resolution axis is resized in 2D with spline ``order``, then the
    low-resolution axis is resampled with ``order_z``. Otherwise one N-D spline resize. Output dtype: the input's.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(data.shape[1:]) == new_shape:
        return data
    dtype = data.dtype if out_dtype is None else out_dtype
    axis = separate_axis(current_spacing, new_spacing, force_separate_z)
    out = np.zeros((data.shape[0], *new_shape), dtype=dtype)
    for c in range(data.shape[0]):
        channel = data[c].astype(float, copy=False)
        if axis is None:
            out[c] = _resize_edge(channel, new_shape, order)
            continue
        inplane = [s for a, s in enumerate(new_shape) if a != axis]
        mid_shape = list(new_shape)
        mid_shape[axis] = channel.shape[axis]
        mid = np.zeros(mid_shape)
        for k in range(channel.shape[axis]):
            index = tuple(k if a == axis else slice(None) for a in range(channel.ndim))
            mid[index] = _resize_edge(channel[index], inplane, order)
        out[c] = _pick_along(mid, axis, new_shape[axis], order_z) if mid.shape[axis] != new_shape[axis] else mid
    return out


def normalise_channel(image: np.ndarray, scheme: str, props: dict[str, float] | None, use_mask: bool,
                      nonzero: np.ndarray | None) -> np.ndarray:
    """nnU-Net's per-channel normalisation on a float32 array (modified in place where nnU-Net does).

    CTNormalization: clip to the training foreground's 0.5/99.5 percentiles, subtract its mean, divide by its std.
    ZScoreNormalization: the image's own mean/std (inside the non-zero mask when ``use_mask``).
    """
    image = image.astype(np.float32, copy=False)
    if scheme == "CTNormalization":
        if props is None:
            raise InputError("CTNormalization needs foreground intensity properties in plans.json")
        np.clip(image, props["percentile_00_5"], props["percentile_99_5"], out=image)
        image -= props["mean"]
        image /= max(props["std"], 1e-8)
        return image
    if scheme == "ZScoreNormalization":
        if use_mask and nonzero is not None:
            mean = image[nonzero].mean()
            std = image[nonzero].std()
            image[nonzero] = (image[nonzero] - mean) / max(std, 1e-8)
        else:
            mean = image.mean()
            std = image.std()
            image -= mean
            image /= max(std, 1e-8)
        return image
    if scheme == "NoNormalization":
        return image
    if scheme == "RescaleTo01Normalization":
        image -= image.min()
        image /= np.clip(image.max(), a_min=1e-8, a_max=None)
        return image
    raise InputError(f"unsupported nnU-Net normalisation scheme {scheme!r}",
                     hint="supported: CTNormalization, ZScoreNormalization, NoNormalization, RescaleTo01Normalization")


def preprocess(data: np.ndarray, spacing: Sequence[float], plan: NnunetRecord) -> tuple[np.ndarray, CaseGeometry]:
    """(C, Z, Y, X) float32 image in SimpleITK order with its spacing (same order) -> network input + geometry."""
    data = data.astype(np.float32)
    tf = list(plan.transpose_forward)
    data = data.transpose([0, *[i + 1 for i in tf]])
    spacing_t = tuple(float(spacing[i]) for i in tf)
    shape_before = tuple(int(s) for s in data.shape[1:])
    box, mask = nonzero_box(data)
    inside = tuple(slice(a, b) for a, b in box)
    data = data[(slice(None), *inside)]
    nonzero = mask[inside]
    target = list(plan.target_spacing)
    if len(target) < data.ndim - 1:
        target = [spacing_t[0], *target]
    new_shape = new_shape_for(data.shape[1:], spacing_t, target)
    for c in range(data.shape[0]):
        data[c] = normalise_channel(data[c], plan.normalization_schemes[c], plan.intensity_properties[c],
                                    plan.use_mask_for_norm[c], nonzero)
    data = resample(data, new_shape, spacing_t, target, *plan.resampling_data)
    geom = CaseGeometry(spacing_t, shape_before, box, tuple(int(s) for s in box_shape(box)), tuple(new_shape))
    return data, geom


def box_shape(box: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    return tuple(b - a for a, b in box)

