"""Opt-in repairs of a slice stack, each returning a record for the provenance/sidecar.

* :func:`detilt` (``--allow-tilt``): a gantry-tilted (sheared) stack onto an orthogonal grid. Each slice is
  shifted in-plane, with bilinear interpolation, by its offset from the line along the slice normal; the
  plane grows to hold every shifted slice and the new border is filled with the stack's minimum value.
* :func:`equalise` (``--allow-uneven``): uneven or missing slices onto equal spacing along the normal, by
  linear interpolation between the two nearest slices. The spacing follows dcm2niix's rule: the smallest
  gap, but at most twice the slice count; the first and last slices keep their positions.

Stacks are float32 arrays (K, rows, columns) in slice order; vectors are DICOM LPS unit vectors, mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medpipe.io.dicom.provenance import DetiltRepair, EqualiseRepair


@dataclass(frozen=True)
class Detilted:
    """A de-tilted stack and where its voxel (0, 0, 0) lies (LPS mm)."""

    stack: np.ndarray
    origin_lps: np.ndarray
    record: DetiltRepair


def _shift_axis(arr: np.ndarray, offset: float, size: int, axis: int, fill: float) -> np.ndarray:
    """Place ``arr`` at a (fractional, non-negative) ``offset`` along ``axis`` in a length-``size`` canvas."""
    whole = math.floor(offset + 1e-9)
    frac = offset - whole
    shape = list(arr.shape)
    shape[axis] = size
    canvas = np.full(shape, fill, dtype=np.float32)
    index: list[slice] = [slice(None)] * arr.ndim
    index[axis] = slice(whole, whole + arr.shape[axis])
    canvas[tuple(index)] = arr
    if frac < 1e-6:
        return canvas
    # out[x] = (1 - frac) * canvas[x] + frac * canvas[x - 1]  (linear interpolation of a sub-pixel shift)
    previous = np.roll(canvas, 1, axis=axis)
    edge: list[slice | int] = [slice(None)] * arr.ndim
    edge[axis] = 0
    previous[tuple(edge)] = fill
    return ((1.0 - frac) * canvas + frac * previous).astype(np.float32)


def detilt(
    stack: np.ndarray,
    ipp: np.ndarray,
    row_cos: np.ndarray,
    col_cos: np.ndarray,
    spacing_rc: tuple[float, float],
    reason: str,
    tilt_deg: float,
) -> Detilted:
    """Resample a sheared stack onto the orthogonal grid spanned by the row, column and normal directions.

    ``ipp`` (K, 3) are the sorted slice positions, ``spacing_rc`` = (column spacing along ``row_cos``,
    row spacing along ``col_cos``). Slice k is shifted by its in-plane offset from slice 0; the grid origin
    stays on slice 0's pixel lattice (slice 0 is not interpolated).
    """
    dx, dy = spacing_rc
    rel = ipp - ipp[0]
    u = rel @ row_cos / dx  # column offset of each slice, in pixels
    v = rel @ col_cos / dy  # row offset
    lo_u, lo_v = math.floor(float(u.min()) + 1e-6), math.floor(float(v.min()) + 1e-6)
    hi_u, hi_v = math.ceil(float(u.max()) - 1e-6), math.ceil(float(v.max()) - 1e-6)
    k, rows, cols = stack.shape
    new_rows, new_cols = rows + hi_v - lo_v, cols + hi_u - lo_u
    fill = float(stack.min())
    out = np.empty((k, new_rows, new_cols), dtype=np.float32)
    for s in range(k):
        shifted = _shift_axis(stack[s], float(v[s] - lo_v), new_rows, 0, fill)
        out[s] = _shift_axis(shifted, float(u[s] - lo_u), new_cols, 1, fill)
    origin = ipp[0] + lo_u * dx * row_cos + lo_v * dy * col_cos
    record = DetiltRepair(
        reason=reason,
        method="per-slice in-plane shift onto an orthogonal grid, bilinear interpolation",
        shift_px_range=((round(float(u.min()), 3), round(float(u.max()), 3)),
                        (round(float(v.min()), 3), round(float(v.max()), 3))),
        plane_before=(cols, rows),
        plane_after=(new_cols, new_rows),
        fill_value=fill,
        tilt_deg=round(tilt_deg, 3),
    )
    return Detilted(out, origin, record)


def equal_spacing(positions_mm: np.ndarray) -> tuple[int, float]:
    """Slice count and spacing for equalising ``positions_mm`` (ascending): smallest gap, at most 2x the count."""
    gaps = np.diff(positions_mm)
    extent = float(positions_mm[-1] - positions_mm[0])
    smallest = float(gaps[gaps > 0].min())
    count = round(extent / smallest) + 1
    count = min(count, 2 * len(positions_mm))
    return count, extent / (count - 1)


def equalise(stack: np.ndarray, positions_mm: np.ndarray, reason: str) -> tuple[np.ndarray, float, EqualiseRepair]:
    """Resample a stack with uneven slice positions onto equal spacing. Returns (stack, spacing_mm, record)."""
    count, spacing = equal_spacing(positions_mm)
    rel = positions_mm - positions_mm[0]
    targets = np.arange(count) * spacing
    upper = np.clip(np.searchsorted(rel, targets, side="left"), 1, len(rel) - 1)
    lower = upper - 1
    weight = np.clip((targets - rel[lower]) / (rel[upper] - rel[lower]), 0.0, 1.0)
    out = np.empty((count, *stack.shape[1:]), dtype=np.float32)
    for m in range(count):
        w = float(weight[m])
        if w < 1e-6:
            out[m] = stack[lower[m]]
        elif w > 1 - 1e-6:
            out[m] = stack[upper[m]]
        else:
            np.multiply(stack[lower[m]], 1.0 - w, out=out[m])
            out[m] += w * stack[upper[m]]
    gaps = np.diff(positions_mm)
    record = EqualiseRepair(
        reason=reason,
        method="linear interpolation along the slice normal between the two nearest slices",
        rule="spacing = smallest gap, at most twice the slice count (as dcm2niix); ends kept",
        slices_before=len(positions_mm),
        slices_after=count,
        gaps_before_mm={
            "min": round(float(gaps.min()), 4),
            "median": round(float(np.median(gaps)), 4),
            "max": round(float(gaps.max()), 4),
        },
        spacing_mm=round(spacing, 6),
    )
    return out, spacing, record
