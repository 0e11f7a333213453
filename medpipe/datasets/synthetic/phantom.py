"""Phantom geometry shared by the synthetic sets: grids, patient coordinates, ellipsoids, smooth fields, painting."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


def grid_affine(
    directions: np.ndarray, spacing_mm: np.ndarray, shape: tuple[int, ...], centre_mm: np.ndarray
) -> np.ndarray:
    """Voxel -> RAS+ mm affine (4, 4) whose grid centre lands on ``centre_mm``; origin rounded to 0.01 mm.
    ``directions`` (3, 3) holds one unit column per array axis; ``spacing_mm`` (3,) per array axis."""
    linear = directions * spacing_mm[None, :]
    origin = centre_mm - linear @ ((np.asarray(shape, dtype=float) - 1.0) / 2.0)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.round(origin, 2)
    return affine


def patient_coords(shape: tuple[int, ...], affine: np.ndarray, centre_mm: np.ndarray) -> Coords:
    """RAS+ mm coordinates relative to ``centre_mm`` of every voxel, as arrays that broadcast to ``shape``."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    out = []
    for w in range(3):
        coord: np.ndarray = np.asarray(affine[w, 3] - centre_mm[w])
        for a in range(3):
            if affine[w, a] != 0.0:
                coord = coord + affine[w, a] * grids[a]
        out.append(coord.astype(np.float32))
    return out[0], out[1], out[2]


def rotation(rz_deg: float, ry_deg: float) -> np.ndarray:
    """Rotation matrix (3, 3): about y by ``ry_deg``, then about z by ``rz_deg``."""
    cz, sz = math.cos(math.radians(rz_deg)), math.sin(math.radians(rz_deg))
    cy, sy = math.cos(math.radians(ry_deg)), math.sin(math.radians(ry_deg))
    rot_z = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    rot_y = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    return rot_z @ rot_y


def ellipsoid_r2(p: Coords, centre: tuple[float, ...], semi_mm: tuple[float, ...],
                 rot: np.ndarray | None = None) -> np.ndarray:
    """Squared normalised radius of an (optionally rotated) ellipsoid; <= 1 inside. Semi-axes in mm."""
    d = [p[i] - centre[i] for i in range(3)]
    local = d if rot is None else [d[0] * rot[0, k] + d[1] * rot[1, k] + d[2] * rot[2, k] for k in range(3)]
    return (local[0] / semi_mm[0]) ** 2 + (local[1] / semi_mm[1]) ** 2 + (local[2] / semi_mm[2]) ** 2


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: np.ndarray) -> np.ndarray:
    """Gaussian-smoothed white noise (I, J, K) float32, rescaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox, truncate=3.0)
    return ((field - field.mean()) / max(float(field.std()), 1e-6)).astype(np.float32)


def paint(tissue: np.ndarray, mask: np.ndarray, code: int) -> np.ndarray:
    """``tissue`` with ``code`` wherever ``mask`` (broadcastable) is true."""
    return np.where(mask, np.uint8(code), tissue)




def superellipse(x: np.ndarray, y: np.ndarray, ax: float, ay: float, power: float = 2.6) -> np.ndarray:
    """Rounded-rectangle cross-section (the abdomen's outline), true inside."""
    return np.abs(x / ax) ** power + np.abs(y / ay) ** power <= 1.0
