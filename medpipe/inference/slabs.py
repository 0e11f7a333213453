"""Long scans in slabs: read, preprocess and run the network on one slab of a scan at a time.

A scan with more voxels than ``inference.max_slab_voxels`` is split along its slice axis (the source array's
third axis) so that neither a float copy of it nor the preprocessing transients nor the sliding window's buffers
are ever held for the whole scan. The slabs are cut on the network grid, never on the source grid:

1. **The network grid of the whole scan** is computed without touching voxels (MONAI's ``Orientation`` and
   ``Spacing`` run lazily on a zero-stride tensor of the source's shape), so every slab is resampled onto an exact
   sub-grid of the grid that whole-volume preprocessing produces. The split axis is the network axis that the
   source's slice axis maps to (any of the three: a sagittal acquisition splits along R-L).
2. **Whole-volume statistics** are gathered in a streaming pass over slabs when the preprocessing needs them:
   the per-channel mean and standard deviation of the non-zero voxels (``zscore_nonzero``) and the foreground box
   (``crop_foreground``), each network voxel counted once, exactly as MONAI's transforms compute them on the whole
   volume.
3. **Slabs follow the sliding window**: the window starts MONAI places on the whole (cropped) grid are split into
   groups of consecutive windows; a slab's core runs from its first window start to the next group's, and the slab
   itself spans every window that covers a voxel of its core (a margin of one window stride on each side, half
   the patch at overlap 0.5). MONAI places exactly those windows on the slab, so each core voxel gets the same
   windows, Gaussian weights and summation order as in the whole volume: the stitched scores equal the unsplit
   ones up to float rounding (the same windows run in other batches of ``sw_batch_size``; z-score statistics are
   summed in float64). A mirror pass that flips the split axis sees the windows of the flipped
   grid, which start from the other end: the slab also spans those over its core, and such a pass runs on that
   part of the slab (:meth:`Slab.extent`), so mirror TTA is exact too.
4. **Each slab reads only the source slices it needs**: its range along the slice axis comes from the slab's
   corners (plus the voxels linear interpolation reads), so slabs of oblique and flipped grids get every source
   voxel they need. The orientation is applied to a view of the stored voxels and the resampling runs in float64
   on one copy of the slab, as whole-volume preprocessing does: the slab's network-grid values are bit-identical
   to the whole volume's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor
from monai.data.utils import dense_patch_slices
from monai.transforms.utils import generate_spatial_bounding_box

from medpipe.config import PipelineConfig
from medpipe.io.geometry import Grid
from medpipe.transforms import RAS_LABELS, foreground_ct, foreground_nonzero, intensity_transform

#: Margin (network voxels) that MONAI's foreground crop adds around the foreground (``transforms.crop_transform``).
CROP_MARGIN = 2


@dataclass(frozen=True)
class NetworkGrid:
    """A network-space grid: (X, Y, Z) shape and its 4 x 4 voxel-to-world affine (RAS mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def sub(self, start: tuple[int, int, int], shape: tuple[int, int, int]) -> NetworkGrid:
        """The sub-grid of ``shape`` voxels starting at voxel ``start``."""
        shift = np.eye(4)
        shift[:3, 3] = start
        return NetworkGrid(tuple(int(v) for v in shape), self.affine @ shift)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Slab:
    """One slab along the split axis, in voxels of the (cropped) network grid: ``lo``..``hi`` is what is
    preprocessed, ``core_lo``..``core_hi`` what is kept; ``src_lo``..``src_hi`` the source slices read. A plain
    pass runs on ``plain`` (lo, hi), a pass mirrored along the split axis on ``mirrored``: the windows MONAI places
    there are those it places on the whole (mirrored) grid over the core."""

    lo: int
    hi: int
    core_lo: int
    core_hi: int
    src_lo: int
    src_hi: int
    plain: tuple[int, int]
    mirrored: tuple[int, int]

    def extent(self, mirrored: bool) -> tuple[int, int]:
        """(offset, length) of a pass's part of the slab image (mirrored: the pass flips the split axis)."""
        lo, hi = self.mirrored if mirrored else self.plain
        return lo - self.lo, hi - lo


@dataclass(frozen=True)
class SlabPlan:
    """How one case is split: the (cropped) network grid the whole case would have, the network axis the slabs are
    cut along, the slabs, and the whole-volume intensity statistics (``zscore_nonzero``: per-channel mean and
    standard deviation of the non-zero voxels); ``array`` (C, I, J, K) on ``source`` is what the slabs are read
    from."""

    array: np.ndarray
    source: Grid
    grid: NetworkGrid
    axis: int
    slabs: tuple[Slab, ...]
    #: Start of the foreground crop in the uncropped network grid (zeros without a crop).
    crop_start: tuple[int, int, int]
    #: The uncropped network grid of the whole case.
    full: NetworkGrid
    #: Margin kept around each core, in network voxels (the largest over slabs and sides).
    margin_vox: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def affine(self) -> torch.Tensor:
        """The network grid's affine (as a preprocessed MetaTensor carries it)."""
        return torch.as_tensor(self.grid.affine, dtype=torch.float64)


def network_grid(cfg: PipelineConfig, source: Grid) -> NetworkGrid:
    """The grid whole-volume preprocessing puts ``source`` on before any crop (orientation, then spacing),
    computed lazily: no voxel is read or allocated."""
    proxy = MetaTensor(torch.zeros(1).expand(1, *source.shape), meta={"affine": torch.as_tensor(source.affine)})
    t = cfg.transforms
    out: Any = mt.Orientation(axcodes=t.orientation, labels=RAS_LABELS, lazy=True)(proxy)
    out = mt.Spacing(pixdim=t.spacing_mm, mode="bilinear", padding_mode="border", lazy=True)(out)
    shape = tuple(int(v) for v in out.peek_pending_shape())
    return NetworkGrid(shape, np.asarray(out.peek_pending_affine(), dtype=float))  # type: ignore[arg-type]


def window_starts(length: int, roi: int, overlap: float) -> list[int]:
    """Start voxels of MONAI's sliding windows along one axis of ``length`` voxels (``roi`` wide), as
    ``sliding_window_inference`` places them (its scan interval, ``dense_patch_slices``)."""
    if length <= roi:
        return [0]
    interval = max(1, int(roi * (1 - overlap)))
    return [int(s[0].start) for s in dense_patch_slices((length,), (roi,), (interval,))]


def split_axis(source: Grid, full: NetworkGrid) -> int:
    """The network axis along which the source's slice axis (its third array axis) runs."""
    net_to_src = np.linalg.inv(source.affine) @ full.affine
    return int(np.argmax(np.abs(net_to_src[2, :3])))


def source_range(source: Grid, grid: NetworkGrid) -> tuple[int, int]:
    """The source slices (lo inclusive, hi exclusive) that linear resampling onto ``grid`` reads: the corners'
    range along the source's third axis, widened by the interpolation neighbours."""
    corners = np.array([[x, y, z, 1.0] for x in (0, grid.shape[0] - 1) for y in (0, grid.shape[1] - 1)
                        for z in (0, grid.shape[2] - 1)]).T
    k = (np.linalg.inv(source.affine) @ grid.affine @ corners)[2]
    lo = int(np.clip(math.floor(k.min()) - 1, 0, source.shape[2]))
    hi = int(np.clip(math.ceil(k.max()) + 2, 0, source.shape[2]))
    return lo, max(hi, lo + 1)


def plan_slabs(cfg: PipelineConfig, source: Grid, grid: NetworkGrid, axis: int, max_voxels: int,
               mirror: bool = False) -> tuple[Slab, ...]:
    """Slabs of ``grid`` (the cropped network grid) along ``axis``: the most windows per core such that no slab
    holds more than ``max_voxels`` voxels on the source or network grid (at least one window per core). ``mirror``:
    some pass flips the split axis, so each slab also spans the windows of the mirrored grid over its core. One
    slab means: no split."""
    inf = cfg.inference
    length, roi = grid.shape[axis], inf.roi_size_vox[axis]
    starts = window_starts(length, roi, inf.overlap)
    best: tuple[Slab, ...] = ()
    for per_core in range(len(starts), 0, -1):
        slabs = _slabs(starts, per_core, length, roi, source, grid, axis, mirror)
        best = slabs
        if max(_cost(s, source, grid, axis) for s in slabs) <= max_voxels:
            break
    return best


def _slabs(starts: list[int], per_core: int, length: int, roi: int, source: Grid, grid: NetworkGrid,
           axis: int, mirror: bool) -> tuple[Slab, ...]:
    bounds = [starts[i] for i in range(0, len(starts), per_core)] + [length]
    # the windows of the grid flipped along the axis, in unflipped voxels
    flipped = sorted(max(0, length - roi) - p for p in starts)
    out = []
    for a, b in itertools.pairwise(bounds):
        plain, mirrored = _span(starts, a, b, roi, length), _span(flipped, a, b, roi, length)
        lo, hi = (min(plain[0], mirrored[0]), max(plain[1], mirrored[1])) if mirror else plain
        s_lo, s_hi = source_range(source, _slab_grid(grid, axis, lo, hi))
        out.append(Slab(lo, hi, a, b, s_lo, s_hi, plain, mirrored if mirror else plain))
    return tuple(out)


def _span(starts: list[int], a: int, b: int, roi: int, length: int) -> tuple[int, int]:
    """The voxels spanned by the windows (``starts``) that cover any voxel of a..b."""
    needed = [p for p in starts if p + roi > a and p < b]
    return needed[0], min(length, needed[-1] + roi)


def _slab_grid(grid: NetworkGrid, axis: int, lo: int, hi: int) -> NetworkGrid:
    start = [0, 0, 0]
    shape = list(grid.shape)
    start[axis], shape[axis] = lo, hi - lo
    return grid.sub(tuple(start), tuple(shape))  # type: ignore[arg-type]


def _cost(slab: Slab, source: Grid, grid: NetworkGrid, axis: int) -> int:
    net = int(np.prod(grid.shape)) // grid.shape[axis] * (slab.hi - slab.lo)
    src = source.shape[0] * source.shape[1] * (slab.src_hi - slab.src_lo)
    return max(net, src)


# ----- preprocessing of one slab -------------------------------------------------------------------------------
def resample_onto(cfg: PipelineConfig, array: np.ndarray, source: Grid, grid: NetworkGrid) -> MetaTensor:
    """The (C, I, J, K) source array resampled onto ``grid`` (a sub-grid of the whole network grid) exactly as
    whole-volume preprocessing resamples it (orientation, then linear resampling with border padding, computed in
    float64), reading only the source slices that ``grid`` needs. The orientation is applied to a view of the
    stored voxels (MONAI's axis permutation and flips, its affine computed lazily), so a slab costs one float64
    copy of its source slices. Returns (C, X, Y, Z) float32."""
    k0, k1 = source_range(source, grid)
    shift = np.eye(4)
    shift[2, 3] = k0
    affine = torch.as_tensor(source.affine @ shift)
    part = array[:, :, :, k0:k1]
    lazy: Any = mt.Orientation(axcodes=cfg.transforms.orientation, labels=RAS_LABELS, lazy=True)(
        MetaTensor(torch.zeros(1).expand(part.shape), meta={"affine": affine}))
    ornt = nib.orientations.ornt_transform(
        nib.io_orientation(source.affine), nib.orientations.axcodes2ornt(cfg.transforms.orientation, RAS_LABELS))
    oriented = nib.orientations.apply_orientation(np.moveaxis(part, 0, -1), ornt)  # a view: flips and transposes
    data = np.ascontiguousarray(np.moveaxis(oriented, -1, 0), dtype=np.float64)
    if tuple(data.shape[1:]) != tuple(int(v) for v in lazy.peek_pending_shape()):  # pragma: no cover - a bug
        raise RuntimeError(f"oriented slab {data.shape[1:]} differs from MONAI's {lazy.peek_pending_shape()}")
    img = MetaTensor(torch.from_numpy(data), meta={"affine": torch.as_tensor(lazy.peek_pending_affine())})
    resample = mt.SpatialResample(mode="bilinear", padding_mode="border", align_corners=False, dtype=np.float64)
    out = resample(img, dst_affine=torch.as_tensor(grid.affine), spatial_size=grid.shape)
    return MetaTensor(torch.as_tensor(out, dtype=torch.float32), meta={"affine": torch.as_tensor(grid.affine)})


def normalise(cfg: PipelineConfig, img: MetaTensor, plan_mean: tuple[float, ...] | None,
              plan_std: tuple[float, ...] | None) -> torch.Tensor:
    """Intensity normalisation of a resampled slab: the CT window (voxelwise), or the z-score with the whole
    volume's statistics."""
    if cfg.transforms.intensity == "ct_window":
        return torch.as_tensor(intensity_transform(cfg)({"image": img})["image"])
    if plan_mean is None or plan_std is None:
        raise ValueError("z-score normalisation of a slab needs the whole volume's statistics")
    norm = mt.NormalizeIntensity(subtrahend=list(plan_mean), divisor=list(plan_std), nonzero=True, channel_wise=True)
    return torch.as_tensor(norm(img))


def slab_image(cfg: PipelineConfig, plan: SlabPlan, slab: Slab) -> torch.Tensor:
    """One slab preprocessed onto its sub-grid of the network grid: (C, X, Y, Z) float32."""
    img = resample_onto(cfg, plan.array, plan.source, _slab_grid(plan.grid, plan.axis, slab.lo, slab.hi))
    return normalise(cfg, img, plan.mean, plan.std)


# ----- whole-volume statistics in a streaming pass -------------------------------------------------------------
def _chunks(full: NetworkGrid, axis: int, source: Grid, max_voxels: int) -> Iterator[tuple[int, NetworkGrid]]:
    per_slice = max(int(np.prod(full.shape)) // full.shape[axis], 1)
    net_to_src = np.linalg.inv(source.affine) @ full.affine
    src_per_slice = source.shape[0] * source.shape[1] * max(abs(float(net_to_src[2, axis])), 1e-6)
    step = max(1, int(max_voxels // max(per_slice, src_per_slice)))
    for lo in range(0, full.shape[axis], step):
        hi = min(full.shape[axis], lo + step)
        yield lo, _slab_grid(full, axis, lo, hi)


def zscore_stats(cfg: PipelineConfig, array: np.ndarray, source: Grid, full: NetworkGrid, axis: int,
                 max_voxels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of the non-zero voxels of the whole resampled volume,
    summed in float64 over slabs (MONAI's ``NormalizeIntensity(nonzero=True, channel_wise=True)``; a zero
    standard deviation divides by 1)."""
    n_ch = array.shape[0]
    count, total, total_sq = np.zeros(n_ch), np.zeros(n_ch), np.zeros(n_ch)
    for _, g in _chunks(full, axis, source, max_voxels):
        img = resample_onto(cfg, array, source, g)
        for c in range(n_ch):
            v = img[c][img[c] != 0].double()
            count[c] += v.numel()
            total[c] += float(v.sum())
            total_sq[c] += float((v * v).sum())
    mean = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    var = np.maximum(np.where(count > 0, total_sq / np.maximum(count, 1) - mean**2, 0.0), 0.0)
    std = np.sqrt(var)
    return tuple(float(m) for m in mean), tuple(float(s) if s > 0 else 1.0 for s in std)


def foreground_crop(cfg: PipelineConfig, array: np.ndarray, source: Grid, full: NetworkGrid, axis: int,
                    max_voxels: int, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
                    ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The foreground box (start, shape) on the whole network grid, as MONAI's ``CropForeground`` (margin
    :data:`CROP_MARGIN`, clipped to the grid) finds it on the normalised whole volume; the whole grid when no
    voxel is foreground."""
    select = foreground_ct if cfg.transforms.intensity == "ct_window" else foreground_nonzero
    lo_all = np.array(full.shape)
    hi_all = np.zeros(3, dtype=int)
    for off, g in _chunks(full, axis, source, max_voxels):
        img = normalise(cfg, resample_onto(cfg, array, source, g), mean, std)
        start, end = generate_spatial_bounding_box(img, select, margin=0, allow_smaller=True)
        if list(end) == [0, 0, 0]:
            continue
        start_a, end_a = np.array(start, dtype=int), np.array(end, dtype=int)
        start_a[axis] += off
        end_a[axis] += off
        lo_all, hi_all = np.minimum(lo_all, start_a), np.maximum(hi_all, end_a)
    if np.any(hi_all <= lo_all):
        return (0, 0, 0), full.shape
    lo = np.maximum(lo_all - CROP_MARGIN, 0)
    hi = np.minimum(hi_all + CROP_MARGIN, np.array(full.shape))
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi - lo)  # type: ignore[return-value]


def make_plan(cfg: PipelineConfig, array: np.ndarray, source: Grid,
              mirror_axes: tuple[int, ...] = ()) -> SlabPlan | None:
    """The plan that splits a (C, I, J, K) case into slabs, or None when it needs no split (at most
    ``inference.max_slab_voxels`` voxels per channel, or too short along the slice axis for two slabs).
    ``mirror_axes``: the network axes some mirror pass flips."""
    budget = cfg.inference.max_slab_voxels
    if budget <= 0 or int(np.prod(source.shape)) <= budget:
        return None
    full = network_grid(cfg, source)
    axis = split_axis(source, full)
    mean = std = None
    if cfg.transforms.intensity != "ct_window":
        mean, std = zscore_stats(cfg, array, source, full, axis, budget)
    start, shape = (0, 0, 0), full.shape
    if cfg.transforms.crop_foreground:
        start, shape = foreground_crop(cfg, array, source, full, axis, budget, mean, std)
    grid = full.sub(start, shape)
    slabs = plan_slabs(cfg, source, grid, axis, budget, axis in mirror_axes)
    if len(slabs) < 2:
        return None
    margin = max(max(s.core_lo - s.lo, s.hi - s.core_hi) for s in slabs)
    return SlabPlan(array, source, grid, axis, slabs, start, full, margin, mean, std)
