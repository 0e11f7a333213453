"""Deterministic synthetic sample data: a KiTS-style CT set and a BraTS-2023-style MRI set.

Both sets are phantoms painted in patient coordinates (RAS+ millimetres relative to the body or brain centre)
and then sampled on deliberately awkward grids (slice-axis-first KiTS layout, LPS, non-zero origins), so that
geometry bugs show up. Arrays are in the file's voxel order (I, J, K). The same ``seed`` gives byte-identical
``.nii.gz`` files: the NIfTI bytes are built in memory and gzip-compressed with ``mtime=0`` and no file name.
"""

from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medpipe.errors import MedpipeError
from medpipe.io.atomic import ensure_writable_dir, write_bytes_atomic

KITS_LABELS: dict[int, str] = {0: "background", 1: "kidney", 2: "tumor"}
BRATS_LABELS: dict[int, str] = {0: "background", 1: "necrosis", 2: "edema", 3: "enhancing tumor"}
BRATS_MODALITIES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
CT_INPLANE_VOX = 112
CT_SPACING_MM = (0.8, 0.8, 2.5)  # world x, y, z
MRI_SHAPE_VOX = (64, 64, 48)
MRI_SPACING_MM = 1.0
MAX_CASES = 99999
_SCL_SLOPE_OFFSET = 112  # byte offset of scl_slope (then scl_inter) in the NIfTI-1 header

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

#: MRI tissue codes (values of :attr:`MriCase.tissue`) with nominal intensity per modality (t1n, t1c, t2w, t2f).
MRI_TISSUES: dict[str, tuple[int, tuple[float, float, float, float]]] = {
    "background": (0, (0.0, 0.0, 0.0, 0.0)),
    "white_matter": (1, (620.0, 640.0, 280.0, 380.0)),
    "grey_matter": (2, (460.0, 480.0, 420.0, 500.0)),
    "csf": (3, (150.0, 160.0, 900.0, 110.0)),
    "deep_grey": (4, (500.0, 520.0, 380.0, 460.0)),
    "edema": (5, (420.0, 440.0, 720.0, 740.0)),
    "enhancing": (6, (480.0, 900.0, 560.0, 600.0)),
    "necrosis": (7, (200.0, 230.0, 820.0, 430.0)),
}
_MR = {name: code for name, (code, _) in MRI_TISSUES.items()}
_MR_TABLE = np.zeros((256, 4), np.float32)  # tissue code -> (t1n, t1c, t2w, t2f)
_MR_TABLE[[code for code, _ in MRI_TISSUES.values()]] = [values for _, values in MRI_TISSUES.values()]
_BRATS_LABEL_OF_TISSUE = {_MR["necrosis"]: 1, _MR["edema"]: 2, _MR["enhancing"]: 3}

#: Per CT case index (cyclic, period 6): voxel layout and whether the case has a tumour.
_CT_LAYOUTS = ("KITS", "LPS", "KITS", "KITS", "LPS", "KITS")
_CT_TUMORS = (True, False, False, True, True, False)
_STREAM_CT, _STREAM_MRI = 0, 1

Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SampleSummary:
    """What :func:`generate_sample_data` wrote (paths are under ``out_dir``)."""

    out_dir: Path
    seed: int
    kits_dir: Path
    brats_dir: Path
    ct_case_ids: tuple[str, ...]
    mri_case_ids: tuple[str, ...]
    files: tuple[Path, ...]
    total_bytes: int


@dataclass(frozen=True)
class CtCase:
    """One CT phantom. ``hu`` (I, J, K) int16 Hounsfield units; ``labels`` uint8 {0, 1 kidney, 2 tumour};
    ``tissue`` uint8 codes of :data:`CT_TISSUES`; ``affine`` voxel -> RAS+ mm (4, 4)."""

    case_id: str
    hu: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True)
class MriCase:
    """One MRI phantom. ``images`` maps each of :data:`BRATS_MODALITIES` to an (I, J, K) int16 volume (0 outside
    the brain); ``labels`` uint8 {0, 1 necrosis, 2 oedema, 3 enhancing}; ``tissue`` codes of :data:`MRI_TISSUES`."""

    case_id: str
    images: dict[str, np.ndarray]
    labels: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray


# ---------------------------------------------------------------------------------------------- geometry


def _affine(
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


def _patient_coords(shape: tuple[int, ...], affine: np.ndarray, centre_mm: np.ndarray) -> Coords:
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


def _rotation(rz_deg: float, ry_deg: float) -> np.ndarray:
    """Rotation matrix (3, 3): about y by ``ry_deg``, then about z by ``rz_deg``."""
    cz, sz = math.cos(math.radians(rz_deg)), math.sin(math.radians(rz_deg))
    cy, sy = math.cos(math.radians(ry_deg)), math.sin(math.radians(ry_deg))
    rot_z = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    rot_y = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    return rot_z @ rot_y


def _r2(p: Coords, centre: tuple[float, ...], semi_mm: tuple[float, ...], rot: np.ndarray | None = None) -> np.ndarray:
    """Squared normalised radius of an (optionally rotated) ellipsoid; <= 1 inside. Semi-axes in mm."""
    d = [p[i] - centre[i] for i in range(3)]
    local = d if rot is None else [d[0] * rot[0, k] + d[1] * rot[1, k] + d[2] * rot[2, k] for k in range(3)]
    return (local[0] / semi_mm[0]) ** 2 + (local[1] / semi_mm[1]) ** 2 + (local[2] / semi_mm[2]) ** 2


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: np.ndarray) -> np.ndarray:
    """Gaussian-smoothed white noise (I, J, K) float32, rescaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox, truncate=3.0)
    return ((field - field.mean()) / max(float(field.std()), 1e-6)).astype(np.float32)


def _paint(tissue: np.ndarray, mask: np.ndarray, code: int) -> np.ndarray:
    """``tissue`` with ``code`` wherever ``mask`` (broadcastable) is true."""
    return np.where(mask, np.uint8(code), tissue)


# ---------------------------------------------------------------------------------------------- CT phantom


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
    return shape, _affine(directions, spacing, shape, centre)


def _superellipse(x: np.ndarray, y: np.ndarray, ax: float, ay: float, power: float = 2.6) -> np.ndarray:
    """Rounded-rectangle cross-section (the abdomen's outline), true inside."""
    return np.abs(x / ax) ** power + np.abs(y / ay) ** power <= 1.0


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
    cavity = _superellipse(x, y, cx, cy)
    air = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), np.uint8)
    tissue = _paint(air, _superellipse(x, y, ax, ay), _CT["subcutaneous_fat"])
    tissue = _paint(tissue, _superellipse(x, y, ax - fat, ay - fat), _CT["muscle"])
    tissue = _paint(tissue, cavity, _CT["visceral_fat"])
    r_vert = rng.uniform(6.0, 7.0)
    y_vert = -cy + r_vert + 5.0
    bowel = cavity & (y > y_vert + r_vert + 6.0) & (fields[0] > 0.0)
    tissue = _paint(tissue, bowel, _CT["bowel"])
    tissue = _paint(tissue, bowel & (fields[1] > 1.8) & (y > 0.0), _CT["gas"])
    liver = _r2(p, (0.45 * cx, 0.1 * cy, rng.uniform(25, 35)), (22.0, 20.0, rng.uniform(38, 46))) <= 1.0
    tissue = _paint(tissue, liver & cavity, _CT["liver"])
    spleen = _r2(p, (-0.6 * cx, -0.25 * cy, rng.uniform(22, 32)), (7.0, 11.0, 14.0), _rotation(-30, 0)) <= 1.0
    tissue = _paint(tissue, spleen & cavity, _CT["spleen"])
    return tissue, _Torso(cavity, r_vert, y_vert)


def _paint_spine(tissue: np.ndarray, p: Coords, rng: np.random.Generator, r_vert: float, y_vert: float) -> np.ndarray:
    """Psoas and paraspinal muscles, aorta, IVC, vertebral bodies with discs, canal, arch, spinous process."""
    y, z = p[1], p[2]
    psoas_growth = np.clip(1.0 - z / 80.0, 0.7, 1.5)
    for side in (-1.0, 1.0):
        psoas = _r2(p, (side * (r_vert + 4.0), y_vert + 1.0, 0.0), (4.5, 5.5, 1e9)) <= psoas_growth**2
        paraspinal = _r2(p, (side * 8.5, y_vert - r_vert - 5.0, 0.0), (6.0, 5.0, 1e9)) <= 1.0
        tissue = _paint(tissue, psoas | paraspinal, _CT["muscle"])
    tissue = _paint(tissue, _r2(p, (-2.5, y_vert + r_vert + 4.5, 0.0), (4.5, 4.5, 1e9)) <= 1.0, _CT["aorta"])
    tissue = _paint(tissue, _r2(p, (7.5, y_vert + r_vert + 5.0, 0.0), (5.5, 3.5, 1e9)) <= 1.0, _CT["ivc"])
    period, phase = rng.uniform(22.0, 26.0), rng.uniform(0.0, 26.0)
    disc = np.mod(z - phase, period) < 5.0
    body_r2 = _r2(p, (0.0, y_vert, 0.0), (r_vert, r_vert, 1e9))
    tissue = _paint(tissue, body_r2 <= 1.0, _CT["bone_cortex"])
    tissue = _paint(tissue, (body_r2 <= (1.0 - 1.5 / r_vert) ** 2) & ~disc, _CT["bone_marrow"])
    tissue = _paint(tissue, (body_r2 <= 1.0) & disc, _CT["disc"])
    y_canal = y_vert - r_vert - 3.5
    canal_r2 = _r2(p, (0.0, y_canal, 0.0), (3.5, 3.5, 1e9))
    tissue = _paint(tissue, (canal_r2 <= (6.0 / 3.5) ** 2) & (y < y_canal + 1.0), _CT["bone_cortex"])
    tissue = _paint(tissue, _r2(p, (0.0, y_canal - 6.0, 0.0), (1.5, 4.0, 1e9)) <= 1.0, _CT["bone_cortex"])
    return _paint(tissue, canal_r2 <= 1.0, _CT["spinal_canal"])


def _kidney(rng: np.random.Generator, side: float, torso: _Torso) -> _Kidney:
    """A random kidney pose beside the vertebra, hilum facing antero-medially, upper pole tilted medially."""
    r_vert, y_vert = torso.r_vert, torso.y_vert
    semi = (rng.uniform(6.0, 7.5), rng.uniform(8.5, 10.0), rng.uniform(17.0, 23.0))
    centre = (
        r_vert + 11.5 + rng.uniform(0.0, 2.0),
        y_vert + rng.uniform(2.5, 5.0),
        rng.uniform(-8.0, 4.0) + (-4.0 if side > 0 else 4.0),
    )
    return _Kidney(side, semi, centre, _rotation(-rng.uniform(15, 35), -rng.uniform(4, 12)))


def _paint_kidney(tissue: np.ndarray, p: Coords, k: _Kidney, cavity: np.ndarray) -> np.ndarray:
    """Perirenal fat, cortex, medulla and the renal sinus (the medial notch that makes the bean shape)."""
    q = (k.side * p[0], p[1], p[2])
    semi, centre, rot = k.semi, k.centre, k.rot
    outer = _r2(q, centre, semi, rot)
    allowed = cavity & (tissue != _CT["bone_cortex"]) & (tissue != _CT["bone_marrow"])
    vessel = (tissue == _CT["aorta"]) | (tissue == _CT["ivc"])
    tissue = _paint(tissue, (outer <= 1.3**2) & allowed & ~vessel, _CT["visceral_fat"])
    local_hilum = rot @ np.array([-0.85 * semi[0], 0.0, 0.0])
    hilum = _r2(q, tuple(np.add(centre, local_hilum)), (0.5 * semi[0], 0.4 * semi[1], 0.45 * semi[2]), rot) <= 1.0
    kidney = (outer <= 1.0) & allowed
    tissue = _paint(tissue, kidney, _CT["kidney_cortex"])
    tissue = _paint(tissue, kidney & (outer <= 0.6**2), _CT["kidney_medulla"])
    return _paint(tissue, kidney & hilum, _CT["renal_sinus_fat"])


def _paint_tumor(
    tissue: np.ndarray, p: Coords, rng: np.random.Generator, k: _Kidney, field: np.ndarray, cavity: np.ndarray
) -> np.ndarray:
    """A sphere-ish tumour (radius 5-12 mm) centred just inside the kidney surface, on its lateral half."""
    direction = np.array([rng.uniform(0.3, 1.0), rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0)])
    surface = direction / np.sqrt(np.sum((direction / np.asarray(k.semi)) ** 2))
    centre = np.add(k.centre, k.rot @ (surface * rng.uniform(0.55, 0.9)))
    radius = rng.uniform(5.0, 12.0)
    q = (k.side * p[0], p[1], p[2])
    inside = _r2(q, tuple(centre), (radius, radius, radius)) <= (1.0 + 0.12 * field) ** 2
    bone = (tissue == _CT["bone_cortex"]) | (tissue == _CT["bone_marrow"])
    return _paint(tissue, inside & cavity & ~bone, _CT["tumor"])


def _ct_intensities(
    tissue: np.ndarray, rng: np.random.Generator, spacing_vox: np.ndarray, texture: np.ndarray
) -> np.ndarray:
    """HU (I, J, K) int16: per-case tissue HU, heterogeneous tumour, partial-volume blur, noise inside the body."""
    table = np.zeros(256, np.float32)
    for code, hu, jitter in CT_TISSUES.values():
        table[code] = hu + rng.uniform(-jitter, jitter)
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
    p = _patient_coords(shape, affine, body_centre)
    fields = (_smooth_field(rng, shape, 4.0 / spacing), _smooth_field(rng, shape, 2.5 / spacing))
    texture = _smooth_field(rng, shape, 1.5 / spacing)
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


# ---------------------------------------------------------------------------------------------- MRI phantom


def _paint_brain(p: Coords, rng: np.random.Generator, gyri: np.ndarray) -> np.ndarray:
    """White matter, cortex with gyral folding and sulcal CSF, interhemispheric fissure, ventricles, deep grey."""
    x, z = p[0], p[2]
    semi = (rng.uniform(24.0, 26.5), rng.uniform(27.0, 29.5), rng.uniform(19.0, 21.0))
    r = np.sqrt(_r2(p, (0.0, 0.0, 0.0), semi))
    surface = 1.0 + 0.025 * gyri
    tissue = _paint(np.zeros(r.shape, np.uint8), r <= surface, _MR["white_matter"])
    cortex = 3.0 / float(np.mean(semi))
    tissue = _paint(tissue, (r <= surface) & (r > surface - cortex * (1.0 + 0.5 * gyri)), _MR["grey_matter"])
    tissue = _paint(tissue, (r <= surface) & (r > surface - 0.07) & (gyri > 1.0), _MR["csf"])
    tissue = _paint(tissue, (r <= surface) & (np.abs(x) < 0.9) & (z > 0.25 * semi[2]), _MR["csf"])
    for side in (-1.0, 1.0):
        deep = _r2(p, (side * 8.0, -2.0, -1.0), (4.5, 7.0, 4.5)) <= 1.0
        tissue = _paint(tissue, deep, _MR["deep_grey"])
        ventricle = _r2(p, (side * 4.5, 1.0, 3.0), (3.0, 11.0, 4.0), _rotation(side * 10.0, 0.0)) <= 1.0
        tissue = _paint(tissue, ventricle, _MR["csf"])
    return _paint(tissue, _r2(p, (0.0, -3.0, -2.0), (1.0, 5.0, 3.0)) <= 1.0, _MR["csf"])


def _paint_glioma(tissue: np.ndarray, p: Coords, rng: np.random.Generator, shape_field: np.ndarray) -> np.ndarray:
    """Oedema (label 2) around an enhancing rim (label 3) around a necrotic core (label 1), in one hemisphere."""
    centre = np.array([rng.choice([-1.0, 1.0]) * rng.uniform(9.0, 13.0), rng.uniform(-10, 10), rng.uniform(-4, 7)])
    r_edema, r_core = rng.uniform(8.5, 12.5), rng.uniform(5.5, 8.0)
    r_necrosis = max(r_core - rng.uniform(1.5, 3.0), 2.0)
    core_centre = centre + rng.uniform(-2.0, 2.0, size=3)
    brain = tissue != _MR["background"]
    edema = _r2(p, tuple(centre), (r_edema,) * 3) <= (1.0 + 0.25 * shape_field) ** 2
    tissue = _paint(tissue, edema & brain & (tissue != _MR["csf"]), _MR["edema"])
    core = _r2(p, tuple(core_centre), (r_core,) * 3) <= (1.0 + 0.12 * shape_field) ** 2
    tissue = _paint(tissue, core & brain, _MR["enhancing"])
    necrosis = _r2(p, tuple(core_centre), (r_necrosis,) * 3) <= (1.0 + 0.1 * shape_field) ** 2
    return _paint(tissue, necrosis & brain, _MR["necrosis"])


def _mri_intensities(tissue: np.ndarray, p: Coords, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One int16 (I, J, K) volume per modality: tissue contrast x per-case gain x smooth bias field,
    partial-volume blur, Gaussian noise (std 10), zero outside the brain (skull-stripped)."""
    brain = tissue != _MR["background"]
    images = {}
    for m, modality in enumerate(BRATS_MODALITIES):
        coeffs = rng.uniform(-0.08, 0.08, size=4)
        bias = 1.0 + (coeffs[0] * p[0] + coeffs[1] * p[1] + coeffs[2] * p[2]) / 30.0 + coeffs[3] * (p[2] / 25.0) ** 2
        image = ndimage.gaussian_filter(_MR_TABLE[tissue, m] * np.float32(rng.uniform(0.85, 1.15)), 0.6, truncate=3.0)
        image = image * bias + rng.standard_normal(tissue.shape, dtype=np.float32) * np.float32(10.0)
        images[modality] = np.where(brain, np.clip(np.rint(image), 0, 32767), 0).astype(np.int16)
    return images


def make_mri_case(seed: int, index: int) -> MriCase:
    """The BraTS-2023-style MRI phantom ``BraTS-GLI-{index:05d}-000``: 64 x 64 x 48 at 1 mm isotropic, LPS like
    BraTS (RAS for every third case), four modalities and a {0, 1, 2, 3} tumour label map on one grid."""
    rng = np.random.default_rng([seed, _STREAM_MRI, index])
    directions = np.eye(3) if index % 3 == 1 else np.diag([-1.0, -1.0, 1.0])
    centre = np.array([rng.uniform(-5, 5), rng.uniform(-30, 10), rng.uniform(0, 30)])
    affine = _affine(directions, np.full(3, MRI_SPACING_MM), MRI_SHAPE_VOX, centre)
    p = _patient_coords(MRI_SHAPE_VOX, affine, centre + rng.uniform(-2.0, 2.0, size=3))
    gyri = _smooth_field(rng, MRI_SHAPE_VOX, np.full(3, 1.5 / MRI_SPACING_MM))
    shape_field = _smooth_field(rng, MRI_SHAPE_VOX, np.full(3, 3.0 / MRI_SPACING_MM))
    tissue = _paint_glioma(_paint_brain(p, rng, gyri), p, rng, shape_field)
    labels = np.zeros(MRI_SHAPE_VOX, np.uint8)
    for code, label in _BRATS_LABEL_OF_TISSUE.items():
        labels[tissue == code] = label
    images = _mri_intensities(tissue, p, rng)
    return MriCase(f"BraTS-GLI-{index:05d}-000", images, labels, tissue, affine)


# ---------------------------------------------------------------------------------------------- writing


def nifti_gz_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """Reproducible ``.nii.gz`` bytes of ``data`` (I, J, K), stored in its own dtype with slope 1 / intercept 0,
    qform = sform = ``affine`` (code 1), mm units, empty ``descrip``; gzip with ``mtime=0`` and no file name."""
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    header = img.header
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(1.0, 0.0)
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = b""
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    payload = bytearray(img.to_bytes())
    # nibabel writes NaN (= "no scaling") for unscaled data; state slope 1 / intercept 0 explicitly instead.
    struct.pack_into(f"{header.endianness}ff", payload, _SCL_SLOPE_OFFSET, 1.0, 0.0)
    return gzip.compress(bytes(payload), compresslevel=6, mtime=0)


def _check_args(seed: int, n_ct: int, n_mri: int) -> None:
    """Refuse seeds and case counts the generator cannot honour."""
    for name, value, top in (("seed", seed, 2**63 - 1), ("n_ct", n_ct, MAX_CASES), ("n_mri", n_mri, MAX_CASES)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value <= top:
            raise MedpipeError(f"{name} must be an integer in 0..{top}, found {value!r}")


def generate_sample_data(out_dir: Path, seed: int = 0, *, n_ct: int = 12, n_mri: int = 10) -> SampleSummary:
    """Write ``n_ct`` KiTS-style CT cases and ``n_mri`` BraTS-2023-style MRI cases under ``out_dir``.

    Layout: ``kits/case_NNNNN/{imaging,segmentation}.nii.gz`` and
    ``brats/BraTS-GLI-NNNNN-000/BraTS-GLI-NNNNN-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``.

    Same seed, same bytes. Existing files of the same names are replaced atomically; other files are left alone.
    Raises :class:`~medpipe.errors.OutputError` naming the folder when it cannot be created or written.
    """
    _check_args(seed, n_ct, n_mri)
    out_dir = ensure_writable_dir(Path(out_dir))
    kits_dir, brats_dir = out_dir / "kits", out_dir / "brats"
    files: list[Path] = []
    ct_ids, mri_ids = [], []
    for i in range(n_ct):
        ct = make_ct_case(seed, i)
        ct_ids.append(ct.case_id)
        for name, data in (("imaging", ct.hu), ("segmentation", ct.labels)):
            files.append(kits_dir / ct.case_id / f"{name}.nii.gz")
            write_bytes_atomic(files[-1], nifti_gz_bytes(data, ct.affine))  # creates the case folder
    for i in range(n_mri):
        mri = make_mri_case(seed, i)
        mri_ids.append(mri.case_id)
        for suffix, data in [*mri.images.items(), ("seg", mri.labels)]:
            files.append(brats_dir / mri.case_id / f"{mri.case_id}-{suffix}.nii.gz")
            write_bytes_atomic(files[-1], nifti_gz_bytes(data, mri.affine))
    total = sum(f.stat().st_size for f in files)
    return SampleSummary(out_dir, int(seed), kits_dir, brats_dir, tuple(ct_ids), tuple(mri_ids), tuple(files), total)
