"""The classification CT phantom: small abdominal slabs with or without a renal tumour, with confounders in both
classes (benign cysts, bowel loops, body size and position, contrast phase, noise, slice thickness), so that the
class cannot be read from global intensity or geometry.

A case is positive ("tumour") when it holds a solid, hypo-enhancing renal mass (label 2 of its segmentation);
every case may hold 0-2 water-density cysts (kidney or liver) and 1-3 round bowel loops, which are round and
darker than the kidney too, so a classifier has to tell a solid mass (about half the cortex HU, textured) from
a cyst (0-20 HU, smooth) inside the kidney.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medpipe.datasets.synthetic.phantom import (
    Coords,
    ellipsoid_r2,
    grid_affine,
    paint,
    patient_coords,
    rotation,
    smooth_field,
    superellipse,
)

CLS_INPLANE_VOX = 32
CLS_INPLANE_MM = 3.0
CLS_THICKNESS_MM = (3.0, 4.0, 5.0)
CLS_LABELS: dict[int, str] = {0: "background", 1: "kidney", 2: "tumor"}
CLS_CLASSES = ("no_tumor", "tumor")
_STREAM_CLS = 2

_T = {"air": 0, "fat": 1, "muscle": 2, "visceral_fat": 3, "bowel": 4, "gas": 5, "liver": 6, "spleen": 7,
      "bone": 8, "marrow": 9, "aorta": 10, "cortex": 11, "medulla": 12, "sinus": 13, "cyst": 14, "tumor": 15}


@dataclass(frozen=True)
class ClsCase:
    """One classification phantom: ``hu`` (I, J, K) int16; ``labels`` uint8 {0, 1 kidney, 2 tumour};
    ``tumor`` whether it is positive; ``affine`` voxel -> RAS+ mm; ``n_cysts`` the confounding cysts painted."""

    case_id: str
    hu: np.ndarray
    labels: np.ndarray
    tumor: bool
    affine: np.ndarray
    n_cysts: int
    slice_mm: float


def has_tumor(index: int) -> bool:
    """Positive cases: indices 0, 3, 4, 7, 8, 11, ... (half of every 4, not in step with the grid layout)."""
    return index % 4 in (0, 3)


def _grid(rng: np.random.Generator, index: int) -> tuple[tuple[int, ...], np.ndarray, float]:
    thickness = float(CLS_THICKNESS_MM[int(rng.integers(0, 3))])
    n_slices = round(80.0 / thickness)
    centre = np.array([rng.uniform(-8, 8), rng.uniform(-30, -10), rng.uniform(-420, -380)])
    spacing = np.array([CLS_INPLANE_MM, CLS_INPLANE_MM, thickness])
    shape = (CLS_INPLANE_VOX, CLS_INPLANE_VOX, n_slices)
    directions = np.diag([-1.0, -1.0, 1.0]) if index % 3 == 1 else np.eye(3)  # LPS or RAS voxel order
    return shape, grid_affine(directions, spacing, shape, centre), thickness


def _kidney_masks(p: Coords, rng: np.random.Generator, side: float, y_kid: float) -> tuple[dict[str, np.ndarray],
                                                                                          tuple[float, ...]]:
    centre = (side * rng.uniform(20.0, 25.0), y_kid + rng.uniform(-2.0, 2.0), rng.uniform(-8.0, 8.0))
    semi = (rng.uniform(7.0, 9.0), rng.uniform(9.0, 11.0), rng.uniform(20.0, 26.0))
    rot = rotation(side * rng.uniform(15, 35), side * rng.uniform(4, 12))
    r2 = ellipsoid_r2(p, centre, semi, rot)
    hilum_c = tuple(np.add(centre, rot @ np.array([-side * 0.85 * semi[0], 0.0, 0.0])))
    hilum = ellipsoid_r2(p, hilum_c, (0.5 * semi[0], 0.4 * semi[1], 0.45 * semi[2]), rot) <= 1.0
    kidney = r2 <= 1.0
    return {"kidney": kidney, "medulla": kidney & (r2 <= 0.6**2), "sinus": kidney & hilum}, (*centre, *semi)


def _sphere_in(p: Coords, rng: np.random.Generator, pose: tuple[float, ...], r_lo: float, r_hi: float,
               depth: tuple[float, float]) -> tuple[np.ndarray, tuple[float, ...], float]:
    """A ball of radius r_lo..r_hi mm centred inside the ellipsoid ``pose`` (centre + semi-axes) at a
    fraction ``depth`` of the way to its surface."""
    centre, semi = np.asarray(pose[:3]), np.asarray(pose[3:])
    direction = rng.normal(size=3)
    direction /= np.sqrt(np.sum((direction / semi) ** 2))
    c = tuple(centre + direction * rng.uniform(*depth))
    r = rng.uniform(r_lo, r_hi)
    return ellipsoid_r2(p, c, (r, r, r)) <= 1.0, c, r


def make_cls_case(seed: int, index: int) -> ClsCase:
    """The classification phantom ``cls_{index:05d}``: 32 x 32 voxels of 3 mm in-plane, 3/4/5 mm slices over
    80 mm, RAS or LPS voxel order; positive when :func:`has_tumor` (a renal mass, label 2)."""
    rng = np.random.default_rng([seed, _STREAM_CLS, index])
    shape, affine, thickness = _grid(rng, index)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    body_centre = affine[:3, :3] @ ((np.asarray(shape) - 1.0) / 2.0) + affine[:3, 3]
    body_centre += np.array([rng.uniform(-5, 5), rng.uniform(-4, 4), 0.0])
    p = patient_coords(shape, affine, body_centre)
    x, y, _ = p
    ax, ay = rng.uniform(38.0, 46.0), rng.uniform(27.0, 33.0)
    fat = rng.uniform(2.0, 6.0)
    cavity = superellipse(x, y, ax - fat - 2.5, ay - fat - 2.5)
    tissue = paint(np.zeros(shape, np.uint8), superellipse(x, y, ax, ay), _T["fat"])
    tissue = paint(tissue, superellipse(x, y, ax - fat, ay - fat), _T["muscle"])
    tissue = paint(tissue, cavity, _T["visceral_fat"])
    y_vert = -(ay - fat - 2.5) + 12.0
    liver = cavity & (ellipsoid_r2(p, (-18.0, 6.0, 10.0), (20.0, 16.0, 50.0)) <= 1.0)
    tissue = paint(tissue, liver, _T["liver"])
    tissue = paint(tissue, cavity & (ellipsoid_r2(p, (22.0, 8.0, 15.0), (8.0, 10.0, 14.0)) <= 1.0), _T["spleen"])
    for _ in range(int(rng.integers(1, 4))):  # round bowel loops (with gas now and then): confounders
        c = (rng.uniform(-20, 20), rng.uniform(4, 18), rng.uniform(-30, 30))
        loop = cavity & (ellipsoid_r2(p, c, (rng.uniform(5, 9),) * 2 + (rng.uniform(8, 20),)) <= 1.0)
        tissue = paint(tissue, loop, _T["bowel"])
        if rng.random() < 0.4:
            tissue = paint(tissue, loop & (y > c[1] + 2.0), _T["gas"])
    body = ellipsoid_r2(p, (0.0, y_vert, 0.0), (7.0, 7.0, 1e9))
    tissue = paint(tissue, body <= 1.0, _T["bone"])
    tissue = paint(tissue, body <= 0.75**2, _T["marrow"])
    tissue = paint(tissue, ellipsoid_r2(p, (-3.0, y_vert + 11.0, 0.0), (4.5, 4.5, 1e9)) <= 1.0, _T["aorta"])
    poses = []
    for side in (1.0, -1.0):
        masks, pose = _kidney_masks(p, rng, side, y_vert + 4.0)
        tissue = paint(tissue, masks["kidney"] & cavity, _T["cortex"])
        tissue = paint(tissue, masks["medulla"] & cavity, _T["medulla"])
        tissue = paint(tissue, masks["sinus"] & cavity, _T["sinus"])
        poses.append(pose)
    kidney = (tissue == _T["cortex"]) | (tissue == _T["medulla"]) | (tissue == _T["sinus"])
    n_cysts = int(rng.integers(0, 3))
    for _ in range(n_cysts):  # benign cysts, in both classes: in a kidney (mostly) or the liver
        organ = int(rng.integers(0, 3))
        if organ < 2:
            ball, _, _ = _sphere_in(p, rng, poses[organ], 3.0, 6.0, (0.3, 0.9))
            tissue = paint(tissue, ball & cavity, _T["cyst"])
        else:
            ball, _, _ = _sphere_in(p, rng, (-18.0, 6.0, 10.0, 20.0, 16.0, 50.0), 4.0, 9.0, (0.0, 0.7))
            tissue = paint(tissue, ball & liver, _T["cyst"])
    positive = has_tumor(index)
    texture = smooth_field(rng, shape, 1.5 / spacing)
    if positive:
        k = poses[int(rng.integers(0, 2))]
        ball, _, _ = _sphere_in(p, rng, k, 12.0, 17.0, (0.5, 0.9))
        irregular = ball | (ellipsoid_r2(p, k[:3], k[3:]) <= 1.0) & ndimage.binary_dilation(ball, iterations=1) \
            & (texture > 0.3)
        tissue = paint(tissue, irregular & cavity & (tissue != _T["bone"]) & (tissue != _T["marrow"]), _T["tumor"])
    labels = np.zeros(shape, np.uint8)
    labels[kidney & (tissue != _T["cyst"])] = 1
    labels[tissue == _T["tumor"]] = 2
    hu = _intensities(tissue, rng, spacing, texture)
    return ClsCase(f"cls_{index:05d}", hu, labels, positive, affine, n_cysts, thickness)


def _intensities(tissue: np.ndarray, rng: np.random.Generator, spacing: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """HU: a per-case contrast phase scales every enhancing tissue; the tumour takes 25-45 % of the cortex HU with
    texture, a cyst stays at water density; partial-volume blur; noise of 8-18 HU inside the body."""
    phase = rng.uniform(0.7, 1.25)
    cortex = 185.0 * phase
    table = np.zeros(256, np.float32)
    nominal = {"air": -1000.0, "fat": -100.0, "muscle": 45.0, "visceral_fat": -90.0, "bowel": 20.0 + 15 * phase,
               "gas": -950.0, "liver": 45.0 + 25.0 * phase, "spleen": 60.0 + 50.0 * phase, "bone": 700.0,
               "marrow": 300.0, "aorta": 80.0 + 160.0 * phase, "cortex": cortex, "medulla": cortex - 20.0,
               "sinus": -70.0, "cyst": rng.uniform(0.0, 20.0), "tumor": cortex * rng.uniform(0.25, 0.45)}
    for name, code in _T.items():
        table[code] = nominal[name] + (rng.uniform(-8.0, 8.0) if name not in ("air", "gas") else 0.0)
    hu = table[tissue]
    hu += np.where(tissue == _T["tumor"], 30.0 * texture, 0.0).astype(np.float32)
    hu = ndimage.gaussian_filter(hu, 0.6 / spacing, truncate=3.0)
    noise = rng.standard_normal(tissue.shape, dtype=np.float32) * np.float32(rng.uniform(8.0, 18.0))
    hu = np.where(tissue != _T["air"], hu + noise, np.float32(-1000.0))
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
