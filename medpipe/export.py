"""Export: network-space class probabilities -> an integer mask on the source grid, written safely.

Instead of replaying the inverse of every preprocessing step (MONAI ``Invertd``: un-crop, un-resample,
un-orient, each a full-volume pass), probabilities are resampled once, directly from the network grid onto the
source grid with MONAI's ``SpatialResample`` (linear), slab by slab along the source's last axis so that memory
stays bounded by C x I x J x slab; the argmax of each slab is stored as uint8/uint16. The mask is written to a
temporary file, checked against the geometry contract, and only then renamed into place.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from medpipe.io.atomic import atomic_path
from medpipe.io.geometry import Grid, check_on_grid
from medpipe.io.nifti import label_dtype, mask_image

#: Upper bound on float32 values held per resampled slab (about 1 GiB).
SLAB_BUDGET_VALUES = 256 * 1024 * 1024


def labels_on_grid(probs: MetaTensor, source: Grid, label_values: list[int] | None = None) -> np.ndarray:
    """Resample (C, X, Y, Z) probabilities (affine in ``probs.affine``) onto ``source`` and take the argmax.

    Returns an (I, J, K) integer array on the source grid. Voxels outside the network field of view get
    class 0. ``label_values[c]`` is the label value of channel ``c`` (default: ``c``).
    """
    n_classes = int(probs.shape[0])
    ni, nj, nk = source.shape
    slab = max(1, min(nk, SLAB_BUDGET_VALUES // max(1, n_classes * ni * nj)))
    values = np.asarray(label_values if label_values is not None else range(n_classes))
    out = np.zeros(source.shape, dtype=label_dtype(int(values.max())))
    resample = SpatialResample(mode="bilinear", padding_mode="zeros", align_corners=False, dtype=torch.float32)
    src_affine = torch.as_tensor(source.affine, dtype=torch.float64)
    for k0 in range(0, nk, slab):
        k1 = min(nk, k0 + slab)
        shift = torch.eye(4, dtype=torch.float64)
        shift[2, 3] = float(k0)
        slab_affine = src_affine @ shift
        with torch.no_grad():
            part = resample(probs, dst_affine=slab_affine, spatial_size=(ni, nj, k1 - k0))
        idx = torch.as_tensor(part).argmax(dim=0).cpu().numpy()
        out[:, :, k0:k1] = values[idx]
    return out


def write_mask(path: str | Path, labels: np.ndarray, source: Grid) -> Path:
    """Write ``labels`` (I, J, K) as a NIfTI mask on ``source``; atomic, and checked by the geometry contract."""
    path = Path(path)
    img = mask_image(labels, source.affine)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
        check_on_grid(tmp, source, shown_path=path)
    return path
