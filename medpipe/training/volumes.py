"""Per-label foreground volumes of the training labels: the range a QC check compares predictions with.

Stored in every checkpoint as ``label_volumes_ml = {"1": [min_ml, max_ml], ...}`` (labels present in at least one
case; a label absent from a case does not widen the range). Reads each label file once (nibabel, no resampling),
volumes from the file's own voxel size.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np

from medpipe.errors import InputError


def label_volumes_ml(path: Path, values: Iterable[int]) -> dict[int, float]:
    """Volume (ml) of each label value in one label file."""
    try:
        img = cast(nib.Nifti1Image, nib.load(str(path)))
        data = np.asarray(img.dataobj)
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as err:
        raise InputError(f"cannot read label file ({err})", path=path) from err
    voxel_ml = abs(float(np.linalg.det(img.affine[:3, :3]))) / 1000.0
    flat = np.rint(data).astype(np.int64, copy=False).ravel()
    counts = np.bincount(flat[flat >= 0])
    return {v: float(counts[v]) * voxel_ml for v in values if v < len(counts) and counts[v] > 0}


def volume_ranges(label_paths: Iterable[Path], values: Iterable[int]) -> dict[str, list[float]]:
    """``{"value": [min_ml, max_ml]}`` over the cases where the label is present."""
    wanted = [v for v in values if v != 0]
    seen: dict[int, list[float]] = {}
    for path in label_paths:
        for v, ml in label_volumes_ml(path, wanted).items():
            seen.setdefault(v, []).append(ml)
    return {str(v): [round(min(ml), 3), round(max(ml), 3)] for v, ml in sorted(seen.items())}
