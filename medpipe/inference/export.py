"""Export: network-space class probabilities -> an integer mask on the source grid, written safely.

Instead of replaying the inverse of every preprocessing step (MONAI ``Invertd``: un-crop, un-resample,
un-orient, each a full-volume pass), probabilities are resampled once, directly from the network grid onto the
source grid with MONAI's ``SpatialResample`` (linear), only inside the box that can hold foreground, slab by slab
so that memory stays bounded; the argmax of each slab is stored as uint8/uint16. The mask is written to a
temporary file, checked against the geometry contract, and only then renamed into place.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from medpipe.io.atomic import atomic_path
from medpipe.io.geometry import Grid, check_on_grid
from medpipe.io.nifti import label_dtype, mask_image

#: Upper bound on float32 values per resampled slab (128 MiB): resampling a slab also holds its sampling grid
#: (3 values per voxel) and the argmax (int64), so the transient peak is about 5x this.
SLAB_BUDGET_VALUES = 32 * 1024 * 1024


def foreground_box(probs: MetaTensor, source: Grid) -> tuple[np.ndarray, np.ndarray] | None:
    """The box of source voxels (lo inclusive, hi exclusive) that can receive a non-background label.

    Linear interpolation is a convex combination of the 8 neighbouring network voxels: where all of them have
    background probability > 0.5, so does the interpolated value, and background is the argmax. So only source
    voxels near network voxels with background probability <= 0.5 need resampling; the argmax is unchanged.
    """
    maybe_fg = torch.as_tensor(probs[0]) <= 0.5
    if not bool(maybe_fg.any()):
        return None
    nz = torch.nonzero(maybe_fg)
    lo_net = nz.min(dim=0).values.cpu().numpy() - 1.0
    hi_net = nz.max(dim=0).values.cpu().numpy() + 1.0
    corners = np.array([[x, y, z, 1.0] for x in (lo_net[0], hi_net[0]) for y in (lo_net[1], hi_net[1])
                        for z in (lo_net[2], hi_net[2])]).T
    net_to_src = np.linalg.inv(source.affine) @ np.asarray(probs.affine, dtype=float)
    src_idx = (net_to_src @ corners)[:3]
    lo = np.clip(np.floor(src_idx.min(axis=1)) - 1, 0, source.shape).astype(int)
    hi = np.clip(np.ceil(src_idx.max(axis=1)) + 2, 0, source.shape).astype(int)
    return (lo, hi) if np.all(hi > lo) else None


def labels_on_grid(probs: MetaTensor, source: Grid, label_values: list[int] | None = None) -> np.ndarray:
    """Resample (C, X, Y, Z) probabilities (affine in ``probs.affine``, channel 0 = background) onto ``source``
    and take the argmax.

    Returns an (I, J, K) integer array on the source grid. Voxels outside the network field of view get
    class 0. ``label_values[c]`` is the label value of channel ``c`` (default: ``c``). Only the box that can
    hold foreground (:func:`foreground_box`) is resampled, slab by slab; the result is the same as resampling
    the whole grid.
    """
    n_classes = int(probs.shape[0])
    values = np.asarray(label_values if label_values is not None else range(n_classes))
    out: np.ndarray = np.zeros(source.shape, dtype=label_dtype(int(values.max())))
    box = foreground_box(probs, source)
    if box is None:
        return out
    for (s0, s1), part in resampled_slabs(probs, source, box):
        idx = part.argmax(dim=0).cpu().numpy()
        out[box[0][0]:box[1][0], box[0][1]:box[1][1], s0:s1] = values[idx]
    return out


def resampled_slabs(maps: MetaTensor, source: Grid, box: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> Iterator[tuple[tuple[int, int], torch.Tensor]]:
    """Resample (C, X, Y, Z) maps (affine in ``maps.affine``) onto ``source`` (linear, zeros outside), slab by
    slab along the source's third axis: yields ((k0, k1), tensor (C, I, J, k1 - k0)) restricted to ``box``
    (lo inclusive, hi exclusive; default the whole grid). No slab holds more than :data:`SLAB_BUDGET_VALUES`."""
    if box is None:
        box = (np.zeros(3, dtype=int), np.asarray(source.shape, dtype=int))
    (i0, j0, k0), (i1, j1, k1) = box
    n = int(maps.shape[0])
    slab = max(1, min(k1 - k0, SLAB_BUDGET_VALUES // max(1, n * (i1 - i0) * (j1 - j0))))
    resample = SpatialResample(mode="bilinear", padding_mode="zeros", align_corners=False, dtype=np.float32)
    src_affine = torch.as_tensor(source.affine, dtype=torch.float64)
    for s0 in range(k0, k1, slab):
        s1 = min(k1, s0 + slab)
        shift = torch.eye(4, dtype=torch.float64)
        shift[:3, 3] = torch.tensor([float(i0), float(j0), float(s0)], dtype=torch.float64)
        with torch.no_grad():
            part = resample(maps, dst_affine=src_affine @ shift, spatial_size=(i1 - i0, j1 - j0, s1 - s0))
        yield (int(s0), int(s1)), torch.as_tensor(part)


def write_mask(path: str | Path, labels: np.ndarray, source: Grid) -> Path:
    """Write ``labels`` (I, J, K) as a NIfTI mask on ``source``; atomic, and checked by the geometry contract."""
    path = Path(path)
    img = mask_image(labels, source.affine)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
        check_on_grid(tmp, source, shown_path=path)
    return path
