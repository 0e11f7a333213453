"""The geometry contract: does an output land exactly on its source grid?

One function, :func:`check_on_grid`, is called on every mask medpipe writes (before the temporary file is
renamed into place). A failure fails the case; it is never a printed warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np

from medpipe.errors import GeometryError

#: Largest allowed difference between affine entries (mm), as in the geometry contract.
AFFINE_TOL_MM = 1e-4


@dataclass(frozen=True)
class Grid:
    """A voxel grid: spatial shape (I, J, K) and the voxel-to-RAS-mm affine (4x4)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(s[0]), float(s[1]), float(s[2]))

    @property
    def orientation(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))

    def to_json(self) -> dict[str, object]:
        return {
            "shape": list(self.shape),
            "spacing_mm": [round(v, 6) for v in self.spacing_mm],
            "orientation": self.orientation,
            "affine": np.asarray(self.affine, dtype=float).round(6).tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Grid:
        """The grid of :meth:`to_json` (the affine as written: rounded to 1e-6 mm)."""
        shape = [int(v) for v in data["shape"]]
        return cls((shape[0], shape[1], shape[2]), np.asarray(data["affine"], dtype=float))


def grid_of(img: nib.spatialimages.SpatialImage) -> Grid:
    """The spatial grid of a nibabel image (first three axes)."""
    shape = tuple(int(s) for s in img.shape[:3])
    return Grid((shape[0], shape[1], shape[2]), np.asarray(img.affine, dtype=float))


def grids_match(a: Grid, b: Grid, tol_mm: float = AFFINE_TOL_MM) -> bool:
    """True when shapes are equal and every affine entry differs by at most ``tol_mm``."""
    return a.shape == b.shape and bool(np.max(np.abs(a.affine - b.affine)) <= tol_mm)


def describe_mismatch(found: Grid, expected: Grid) -> str:
    """A one-line description of how two grids differ."""
    if found.shape != expected.shape:
        return f"shape {found.shape}, expected {expected.shape}"
    diff = float(np.max(np.abs(found.affine - expected.affine)))
    parts = [f"affine differs by up to {diff:.3g} mm"]
    if found.orientation != expected.orientation:
        parts.append(f"orientation {found.orientation}, expected {expected.orientation}")
    fs, es = found.spacing_mm, expected.spacing_mm
    if not np.allclose(fs, es, atol=1e-4):
        parts.append(f"spacing {tuple(round(v, 4) for v in fs)} mm, expected {tuple(round(v, 4) for v in es)} mm")
    return "; ".join(parts)


def require_same_grid(found: Grid, expected: Grid, path: str | Path, what: str = "grid") -> None:
    """Raise :class:`GeometryError` (naming ``path``) unless the grids match within tolerance."""
    if not grids_match(found, expected):
        raise GeometryError(f"{what} does not match: {describe_mismatch(found, expected)}", path=path)


def check_on_grid(path: str | Path, source: Grid, *, shown_path: str | Path | None = None) -> None:
    """Check a written label map against its source grid (the geometry contract).

    Re-reads ``path`` from disk and requires: the same shape, the affine within :data:`AFFINE_TOL_MM`,
    qform and sform both equal to it, an integer dtype, scale slope 1 and intercept 0.
    ``shown_path`` is the name used in errors (the final name when ``path`` is a temporary file).
    """
    name = shown_path or path
    img = cast(nib.Nifti1Image, nib.load(str(path)))
    hdr = img.header
    require_same_grid(grid_of(img), source, name, what="written mask grid")
    if not np.issubdtype(hdr.get_data_dtype(), np.integer):
        raise GeometryError(f"mask dtype {hdr.get_data_dtype()}, expected an integer type", path=name)
    slope, inter = hdr.get_slope_inter()
    if slope not in (None, 1.0) or inter not in (None, 0.0):
        raise GeometryError(f"mask has scaling slope {slope} intercept {inter}, expected 1 and 0", path=name)
    qform, qcode = img.get_qform(coded=True)
    if qform is None or int(qcode) == 0 or int(hdr["sform_code"]) == 0:
        raise GeometryError("mask lacks a qform or sform code", path=name)
    if float(np.max(np.abs(qform - source.affine))) > 1e-3:
        raise GeometryError("mask qform disagrees with its sform", path=name)
