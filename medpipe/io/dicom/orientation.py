"""Orientation vocabulary for DICOM stacks (a leaf module: the scan and the geometry analysis both use it)."""

from __future__ import annotations

import numpy as np


def plane_name(iop: tuple[float, ...] | None) -> str:
    """``axial``, ``coronal``, ``sagittal`` or ``oblique`` from the slice normal (``no orientation``)."""
    if iop is None:
        return "no orientation"
    normal = np.cross(iop[:3], iop[3:])
    size = float(np.linalg.norm(normal))
    if size < 1e-6:
        return "invalid orientation"
    normal = np.abs(normal / size)
    axis = int(np.argmax(normal))
    name = ("sagittal", "coronal", "axial")[axis]
    return name if normal[axis] > 0.99 else f"oblique ({name})"
