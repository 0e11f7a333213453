"""The KiTS-style CT phantom: torso, spine, kidneys and tumours in Hounsfield units, on slice-axis-first (KiTS) and
LPS grids."""

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

CT_INPLANE_VOX = 112
CT_SPACING_MM = (0.8, 0.8, 2.5)  # world x, y, z
KITS_LABELS: dict[int, str] = {0: "background", 1: "kidney", 2: "tumor"}
_STREAM_CT = 0


#: CT tissue codes (values of :attr:`CtCase.tissue`) with nominal HU and the per-case uniform jitter (HU).
CT_TISSUES: dict[str, tuple[int, float, float]] = {
    "air": (0, -1000.0, 0.0),
    "subcutaneous_fat": (1, -105.0, 10.0),
    "muscle": (2, 45.0, 8.0),
    "visceral_fat": (3, -95.0, 10.0),
    "bowel": (4, 25.0, 10.0),
    "gas": (5, -950.0, 20.0),
    "liver": (6, 62.0, 6.0),
    "spleen": (7, 105.0, 10.0),
    "bone_cortex": (8, 850.0, 60.0),
    "bone_marrow": (9, 520.0, 60.0),
    "disc": (10, 85.0, 10.0),
    "spinal_canal": (11, 20.0, 5.0),
    "aorta": (12, 220.0, 30.0),
    "ivc": (13, 125.0, 20.0),
    "kidney_cortex": (14, 185.0, 15.0),
    "kidney_medulla": (15, 170.0, 0.0),  # drawn as the case's cortex HU minus 0-25
    "renal_sinus_fat": (16, -80.0, 10.0),
    "tumor": (17, 95.0, 15.0),
}
_CT = {name: code for name, (code, _, _) in CT_TISSUES.items()}

#: Per CT case index (cyclic, period 6): voxel layout and whether the case has a tumour.
_CT_LAYOUTS = ("KITS", "LPS", "KITS", "KITS", "LPS", "KITS")
_CT_TUMORS = (True, False, False, True, True, False)


@dataclass(frozen=True)
class CtCase:
    """One CT phantom. ``hu`` (I, J, K) int16 Hounsfield units; ``labels`` uint8 {0, 1 kidney, 2 tumour};
    ``tissue`` uint8 codes of :data:`CT_TISSUES`; ``affine`` voxel -> RAS+ mm (4, 4)."""

    case_id: str
    hu: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray



def _ct_grid(rng: np.random.Generator, layout: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of a CT case: KiTS slice-axis-first (I=-z, J=-y, K=-x) or LPS (I=-x, J=-y, K=+z)."""
    n_slices = int(rng.integers(36, 41))
    centre = np.array([rng.uniform(-10, 10), rng.uniform(-60, -20), rng.uniform(-480, -320)])
    if layout == "KITS":
        directions = np.array([[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])
        spacing = np.array([CT_SPACING_MM[2], CT_SPACING_MM[1], CT_SPACING_MM[0]])
        shape: tuple[int, ...] = (n_slices, CT_INPLANE_VOX, CT_INPLANE_VOX)
    else:
        directions = np.diag([-1.0, -1.0, 1.0])
        spacing = np.array(CT_SPACING_MM)
        shape = (CT_INPLANE_VOX, CT_INPLANE_VOX, n_slices)
    return shape, grid_affine(directions, spacing, shape, centre)


@dataclass(frozen=True)
class _Torso:
    """Landmarks of the painted torso: the abdominal cavity mask, vertebral body radius and centre y (mm)."""

    cavity: np.ndarray
    r_vert: float
    y_vert: float


@dataclass(frozen=True)
class _Kidney:
    """A kidney pose in the canonical right-side frame (the left kidney is painted in mirrored x), in mm."""

    side: float
    semi: tuple[float, float, float]
    centre: tuple[float, float, float]
    rot: np.ndarray


def _paint_torso(
    p: Coords, rng: np.random.Generator, fields: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, _Torso]:
    """Body wall, bowel, liver and spleen. Returns (tissue codes, landmarks for the retroperitoneum)."""
    x, y, z = p
    ax, ay, fat, wall = rng.uniform(37.0, 39.0), rng.uniform(27.0, 29.0), rng.uniform(2.5, 4.5), 2.5
    cx, cy = ax - fat - wall, ay - fat - wall
    cavity = superellipse(x, y, cx, cy)
    air = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), np.uint8)
    tissue = paint(air, superellipse(x, y, ax, ay), _CT["subcutaneous_fat"])
    tissue = paint(tissue, superellipse(x, y, ax - fat, ay - fat), _CT["muscle"])
    tissue = paint(tissue, cavity, _CT["visceral_fat"])
    r_vert = rng.uniform(6.0, 7.0)
    y_vert = -cy + r_vert + 5.0
    bowel = cavity & (y > y_vert + r_vert + 6.0) & (fields[0] > 0.0)
    tissue = paint(tissue, bowel, _CT["bowel"])
    tissue = paint(tissue, bowel & (fields[1] > 1.8) & (y > 0.0), _CT["gas"])
    liver = ellipsoid_r2(p, (0.45 * cx, 0.1 * cy, rng.uniform(25, 35)), (22.0, 20.0, rng.uniform(38, 46))) <= 1.0
    tissue = paint(tissue, liver & cavity, _CT["liver"])
    spleen = ellipsoid_r2(p, (-0.6 * cx, -0.25 * cy, rng.uniform(22, 32)), (7.0, 11.0, 14.0), rotation(-30, 0)) <= 1.0
    tissue = paint(tissue, spleen & cavity, _CT["spleen"])
    return tissue, _Torso(cavity, r_vert, y_vert)


def _paint_spine(tissue: np.ndarray, p: Coords, rng: np.random.Generator, r_vert: float, y_vert: float) -> np.ndarray:
    """Psoas and paraspinal muscles, aorta, IVC, vertebral bodies with discs, canal, arch, spinous process."""
    y, z = p[1], p[2]
    psoas_growth = np.clip(1.0 - z / 80.0, 0.7, 1.5)
    for side in (-1.0, 1.0):
        psoas = ellipsoid_r2(p, (side * (r_vert + 4.0), y_vert + 1.0, 0.0), (4.5, 5.5, 1e9)) <= psoas_growth**2
        paraspinal = ellipsoid_r2(p, (side * 8.5, y_vert - r_vert - 5.0, 0.0), (6.0, 5.0, 1e9)) <= 1.0
        tissue = paint(tissue, psoas | paraspinal, _CT["muscle"])
    tissue = paint(tissue, ellipsoid_r2(p, (-2.5, y_vert + r_vert + 4.5, 0.0), (4.5, 4.5, 1e9)) <= 1.0, _CT["aorta"])
    tissue = paint(tissue, ellipsoid_r2(p, (7.5, y_vert + r_vert + 5.0, 0.0), (5.5, 3.5, 1e9)) <= 1.0, _CT["ivc"])
    period, phase = rng.uniform(22.0, 26.0), rng.uniform(0.0, 26.0)
    disc = np.mod(z - phase, period) < 5.0
    body_r2 = ellipsoid_r2(p, (0.0, y_vert, 0.0), (r_vert, r_vert, 1e9))
    tissue = paint(tissue, body_r2 <= 1.0, _CT["bone_cortex"])
    tissue = paint(tissue, (body_r2 <= (1.0 - 1.5 / r_vert) ** 2) & ~disc, _CT["bone_marrow"])
    tissue = paint(tissue, (body_r2 <= 1.0) & disc, _CT["disc"])
    y_canal = y_vert - r_vert - 3.5
    canal_r2 = ellipsoid_r2(p, (0.0, y_canal, 0.0), (3.5, 3.5, 1e9))
    tissue = paint(tissue, (canal_r2 <= (6.0 / 3.5) ** 2) & (y < y_canal + 1.0), _CT["bone_cortex"])
    tissue = paint(tissue, ellipsoid_r2(p, (0.0, y_canal - 6.0, 0.0), (1.5, 4.0, 1e9)) <= 1.0, _CT["bone_cortex"])
    return paint(tissue, canal_r2 <= 1.0, _CT["spinal_canal"])


def _kidney(rng: np.random.Generator, side: float, torso: _Torso) -> _Kidney:
    """A random kidney pose beside the vertebra, hilum facing antero-medially, upper pole tilted medially."""
    r_vert, y_vert = torso.r_vert, torso.y_vert
    semi = (rng.uniform(6.0, 7.5), rng.uniform(8.5, 10.0), rng.uniform(17.0, 23.0))
    centre = (
        r_vert + 11.5 + rng.uniform(0.0, 2.0),
        y_vert + rng.uniform(2.5, 5.0),
        rng.uniform(-8.0, 4.0) + (-4.0 if side > 0 else 4.0),
    )
    return _Kidney(side, semi, centre, rotation(-rng.uniform(15, 35), -rng.uniform(4, 12)))


def _paint_kidney(tissue: np.ndarray, p: Coords, k: _Kidney, cavity: np.ndarray) -> np.ndarray:
    """Perirenal fat, cortex, medulla and the renal sinus (the medial notch that makes the bean shape)."""
    q = (k.side * p[0], p[1], p[2])
    semi, centre, rot = k.semi, k.centre, k.rot
    outer = ellipsoid_r2(q, centre, semi, rot)
    allowed = cavity & (tissue != _CT["bone_cortex"]) & (tissue != _CT["bone_marrow"])
    vessel = (tissue == _CT["aorta"]) | (tissue == _CT["ivc"])
    tissue = paint(tissue, (outer <= 1.3**2) & allowed & ~vessel, _CT["visceral_fat"])
    local_hilum = rot @ np.array([-0.85 * semi[0], 0.0, 0.0])
    hilum_semi = (0.5 * semi[0], 0.4 * semi[1], 0.45 * semi[2])
    hilum = ellipsoid_r2(q, tuple(np.add(centre, local_hilum)), hilum_semi, rot) <= 1.0
    kidney = (outer <= 1.0) & allowed
    tissue = paint(tissue, kidney, _CT["kidney_cortex"])
    tissue = paint(tissue, kidney & (outer <= 0.6**2), _CT["kidney_medulla"])
    return paint(tissue, kidney & hilum, _CT["renal_sinus_fat"])


def _paint_tumor(
    tissue: np.ndarray, p: Coords, rng: np.random.Generator, k: _Kidney, field: np.ndarray, cavity: np.ndarray
) -> np.ndarray:
    """A sphere-ish tumour (radius 5-12 mm) centred just inside the kidney surface, on its lateral half."""
    direction = np.array([rng.uniform(0.3, 1.0), rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0)])
    surface = direction / np.sqrt(np.sum((direction / np.asarray(k.semi)) ** 2))
    centre = np.add(k.centre, k.rot @ (surface * rng.uniform(0.55, 0.9)))
    radius = rng.uniform(5.0, 12.0)
    q = (k.side * p[0], p[1], p[2])
    inside = ellipsoid_r2(q, tuple(centre), (radius, radius, radius)) <= (1.0 + 0.12 * field) ** 2
    bone = (tissue == _CT["bone_cortex"]) | (tissue == _CT["bone_marrow"])
    return paint(tissue, inside & cavity & ~bone, _CT["tumor"])


def _ct_intensities(
    tissue: np.ndarray, rng: np.random.Generator, spacing_vox: np.ndarray, texture: np.ndarray
) -> np.ndarray:
    """HU (I, J, K) int16: per-case tissue HU, heterogeneous tumour, partial-volume blur, noise inside the body."""
    table = np.zeros(256, np.float32)
    for code, base_hu, jitter in CT_TISSUES.values():
        table[code] = base_hu + rng.uniform(-jitter, jitter)
    table[_CT["kidney_medulla"]] = table[_CT["kidney_cortex"]] - rng.uniform(0.0, 25.0)
    hu = table[tissue]
    hu += np.where(tissue == _CT["tumor"], 18.0 * texture, 0.0).astype(np.float32)
    hu = ndimage.gaussian_filter(hu, 0.5 / spacing_vox, truncate=3.0)
    noise = rng.standard_normal(tissue.shape, dtype=np.float32) * np.float32(rng.uniform(10.0, 13.0))
    hu = np.where(tissue != _CT["air"], hu + noise, np.float32(-1000.0))
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def make_ct_case(seed: int, index: int) -> CtCase:
    """The KiTS-style CT phantom ``case_{index:05d}``: about 112 x 112 in-plane x 36-40 slices,
    0.8 x 0.8 x 2.5 mm, KiTS slice-first or LPS layout (see :data:`_CT_LAYOUTS`)."""
    rng = np.random.default_rng([seed, _STREAM_CT, index])  # one stream per (seed, data set, case)
    shape, affine = _ct_grid(rng, _CT_LAYOUTS[index % 6])
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    body_centre = affine[:3, :3] @ ((np.asarray(shape) - 1.0) / 2.0) + affine[:3, 3]
    body_centre += np.array([rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(-3, 3)])
    p = patient_coords(shape, affine, body_centre)
    fields = (smooth_field(rng, shape, 4.0 / spacing), smooth_field(rng, shape, 2.5 / spacing))
    texture = smooth_field(rng, shape, 1.5 / spacing)
    tissue, torso = _paint_torso(p, rng, fields)
    tissue = _paint_spine(tissue, p, rng, torso.r_vert, torso.y_vert)
    kidneys = [_kidney(rng, side, torso) for side in (1.0, -1.0)]
    for k in kidneys:
        tissue = _paint_kidney(tissue, p, k, torso.cavity)
    if _CT_TUMORS[index % 6]:
        tissue = _paint_tumor(tissue, p, rng, kidneys[int(rng.integers(0, 2))], texture, torso.cavity)
    labels = np.zeros(shape, np.uint8)
    labels[(tissue == _CT["kidney_cortex"]) | (tissue == _CT["kidney_medulla"])] = 1
    labels[tissue == _CT["tumor"]] = 2
    hu = _ct_intensities(tissue, rng, spacing, texture)
    return CtCase(f"case_{index:05d}", hu, labels, tissue, affine)


