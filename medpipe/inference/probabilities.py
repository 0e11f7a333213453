"""Probability and uncertainty maps on the source grid, uint8-quantised (``--save-probabilities``,
``--save-uncertainty``).

Both files are 4D NIfTI on the input's grid (same shape and affine as the mask, one frame per channel on the 4th
axis), stored as uint8 with ``scl_slope = 1/255``: readers that apply the NIfTI scaling (nibabel's ``get_fdata``,
SimpleITK, ITK-SNAP) see values in [0, 1]; the raw byte ``q`` means ``q / 255``.

- ``<case>_probabilities.nii.gz``: frame c = the ensemble's mean probability of label value c, resampled linearly
  like the mask (the argmax of the frames is the mask, up to ties from quantisation) and renormalised per voxel;
  outside the network's field of view background is 1. The frames of a voxel sum to 1 within quantisation
  (at most C / 2 / 255). Region (sigmoid) models: the decoded label scores, clipped to [0, 1] and renormalised.
- ``<case>_uncertainty.nii.gz``: frame 0 = entropy of the mean distribution, frame 1 = mutual information (entropy
  of the mean minus the mean of the passes' entropies: the passes' disagreement), both divided by ``log(C)`` so
  that they lie in [0, 1]. The mutual information is 0 where all passes (models x mirror flips) agree, and 0
  everywhere with a single pass.

Resampling runs slab by slab (:func:`medpipe.inference.export.resampled_slabs`): no float array of the full
source grid is ever held; only the uint8 result is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from medpipe.errors import OutputError
from medpipe.inference.export import resampled_slabs
from medpipe.inference.predictor import as_distribution, entropy
from medpipe.io.atomic import atomic_path
from medpipe.io.geometry import Grid
from medpipe.io.nifti import nifti_image

#: Quantisation step of the stored maps: value = byte / 255.
SCALE = 1.0 / 255.0


def quantise(p: torch.Tensor) -> np.ndarray:
    """Values in [0, 1] -> uint8 bytes (round to nearest)."""
    return (p.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy()


def _quantised_slabs(scores: MetaTensor, source: Grid) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """Slab by slab along K: ((k0, k1), uint8 (C, I, J, k1 - k0)) probabilities on ``source``, renormalised,
    background 1 outside the network's field of view."""
    for (k0, k1), part in resampled_slabs(scores, source):
        p = as_distribution(part)
        outside = part.clamp(0.0, 1.0).sum(dim=0) < 1e-6
        p[0][outside] = 1.0
        yield (k0, k1), quantise(p)


def probabilities_on_grid(scores: MetaTensor, source: Grid, labels: np.ndarray, values: Sequence[int], *,
                          keep_all: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean scores (C, X, Y, Z) on the network grid -> uint8 probabilities on ``source`` (byte; probability =
    byte / 255), in one resampling pass: the probability of the label the mask ``labels`` (I, J, K) gives each
    voxel (I, J, K; what the lesion table's mean and maximum probability per lesion read), and with ``keep_all``
    every class's (I, J, K, C; ``--save-probabilities``), else None. ``values``: the label value of each channel.
    Memory: the one byte map, plus the C-channel one only when asked for."""
    channel = np.zeros(max(values) + 1, dtype=np.intp)
    channel[np.asarray(values)] = np.arange(len(values))
    own = np.zeros(source.shape, dtype=np.uint8)
    full = np.zeros((*source.shape, int(scores.shape[0])), dtype=np.uint8) if keep_all else None
    for (k0, k1), q in _quantised_slabs(scores, source):
        own[:, :, k0:k1] = np.take_along_axis(q, channel[labels[None, :, :, k0:k1]], axis=0)[0]
        if full is not None:
            full[:, :, k0:k1, :] = np.moveaxis(q, 0, -1)
    return own, full


def uncertainty_maps(mean: torch.Tensor, entropy_sum: torch.Tensor | None, n_passes: int) -> torch.Tensor:
    """(2, X, Y, Z) on the network grid: normalised entropy of the mean and normalised mutual information."""
    n_classes = int(mean.shape[0])
    norm = math.log(n_classes) if n_classes > 1 else 1.0
    h_mean = entropy(mean)
    if entropy_sum is None or n_passes < 2:
        mi = torch.zeros_like(h_mean)
    else:
        mi = (h_mean - entropy_sum.to(h_mean.device) / n_passes).clamp_min(0.0)
    return torch.stack([h_mean, mi]) / norm


def uncertainty_on_grid(maps: MetaTensor, source: Grid) -> np.ndarray:
    """(2, X, Y, Z) network-grid uncertainty -> uint8 (I, J, K, 2) on ``source`` (0 outside the field of view)."""
    out = np.zeros((*source.shape, int(maps.shape[0])), dtype=np.uint8)
    for (k0, k1), part in resampled_slabs(maps, source):
        out[:, :, k0:k1, :] = np.moveaxis(quantise(part), 0, -1)
    return out


def write_maps(path: str | Path, data: np.ndarray, source: Grid) -> Path:
    """Write uint8 maps (I, J, K, C) as 4D NIfTI on ``source`` with ``scl_slope = 1/255``; atomic, and re-read
    to check shape and affine."""
    path = Path(path)
    img = nifti_image(data.astype(np.uint8, copy=False), source.affine, "medpipe probabilities", slope=SCALE)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
        back = cast(nib.Nifti1Image, nib.load(str(tmp)))
        if back.shape[:3] != tuple(source.shape) or not np.allclose(back.affine, source.affine, atol=1e-4):
            raise OutputError("written map is not on the source grid", path=path)
    return path
