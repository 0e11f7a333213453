"""The BraTS-2023-style MRI phantom: brain with gyri and a glioma (necrosis, oedema, enhancing rim) in four
modalities (t1n, t1c, t2w, t2f)."""

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
)

BRATS_LABELS: dict[int, str] = {0: "background", 1: "necrosis", 2: "edema", 3: "enhancing tumor"}
BRATS_MODALITIES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
MRI_SHAPE_VOX = (64, 64, 48)
MRI_SPACING_MM = 1.0
_STREAM_MRI = 1

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


@dataclass(frozen=True)
class MriCase:
    """One MRI phantom. ``images`` maps each of :data:`BRATS_MODALITIES` to an (I, J, K) int16 volume (0 outside
    the brain); ``labels`` uint8 {0, 1 necrosis, 2 oedema, 3 enhancing}; ``tissue`` codes of :data:`MRI_TISSUES`."""

    case_id: str
    images: dict[str, np.ndarray]
    labels: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray


def _paint_brain(p: Coords, rng: np.random.Generator, gyri: np.ndarray) -> np.ndarray:
    """White matter, cortex with gyral folding and sulcal CSF, interhemispheric fissure, ventricles, deep grey."""
    x, z = p[0], p[2]
    semi = (rng.uniform(24.0, 26.5), rng.uniform(27.0, 29.5), rng.uniform(19.0, 21.0))
    r = np.sqrt(ellipsoid_r2(p, (0.0, 0.0, 0.0), semi))
    surface = 1.0 + 0.025 * gyri
    tissue = paint(np.zeros(r.shape, np.uint8), r <= surface, _MR["white_matter"])
    cortex = 3.0 / float(np.mean(semi))
    tissue = paint(tissue, (r <= surface) & (r > surface - cortex * (1.0 + 0.5 * gyri)), _MR["grey_matter"])
    tissue = paint(tissue, (r <= surface) & (r > surface - 0.07) & (gyri > 1.0), _MR["csf"])
    tissue = paint(tissue, (r <= surface) & (np.abs(x) < 0.9) & (z > 0.25 * semi[2]), _MR["csf"])
    for side in (-1.0, 1.0):
        deep = ellipsoid_r2(p, (side * 8.0, -2.0, -1.0), (4.5, 7.0, 4.5)) <= 1.0
        tissue = paint(tissue, deep, _MR["deep_grey"])
        ventricle = ellipsoid_r2(p, (side * 4.5, 1.0, 3.0), (3.0, 11.0, 4.0), rotation(side * 10.0, 0.0)) <= 1.0
        tissue = paint(tissue, ventricle, _MR["csf"])
    return paint(tissue, ellipsoid_r2(p, (0.0, -3.0, -2.0), (1.0, 5.0, 3.0)) <= 1.0, _MR["csf"])


def _paint_glioma(tissue: np.ndarray, p: Coords, rng: np.random.Generator, shape_field: np.ndarray) -> np.ndarray:
    """Oedema (label 2) around an enhancing rim (label 3) around a necrotic core (label 1), in one hemisphere."""
    centre = np.array([rng.choice([-1.0, 1.0]) * rng.uniform(9.0, 13.0), rng.uniform(-10, 10), rng.uniform(-4, 7)])
    r_edema, r_core = rng.uniform(8.5, 12.5), rng.uniform(5.5, 8.0)
    r_necrosis = max(r_core - rng.uniform(1.5, 3.0), 2.0)
    core_centre = centre + rng.uniform(-2.0, 2.0, size=3)
    brain = tissue != _MR["background"]
    edema = ellipsoid_r2(p, tuple(centre), (r_edema,) * 3) <= (1.0 + 0.25 * shape_field) ** 2
    tissue = paint(tissue, edema & brain & (tissue != _MR["csf"]), _MR["edema"])
    core = ellipsoid_r2(p, tuple(core_centre), (r_core,) * 3) <= (1.0 + 0.12 * shape_field) ** 2
    tissue = paint(tissue, core & brain, _MR["enhancing"])
    necrosis = ellipsoid_r2(p, tuple(core_centre), (r_necrosis,) * 3) <= (1.0 + 0.1 * shape_field) ** 2
    return paint(tissue, necrosis & brain, _MR["necrosis"])


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
    affine = grid_affine(directions, np.full(3, MRI_SPACING_MM), MRI_SHAPE_VOX, centre)
    p = patient_coords(MRI_SHAPE_VOX, affine, centre + rng.uniform(-2.0, 2.0, size=3))
    gyri = smooth_field(rng, MRI_SHAPE_VOX, np.full(3, 1.5 / MRI_SPACING_MM))
    shape_field = smooth_field(rng, MRI_SHAPE_VOX, np.full(3, 3.0 / MRI_SPACING_MM))
    tissue = _paint_glioma(_paint_brain(p, rng, gyri), p, rng, shape_field)
    labels = np.zeros(MRI_SHAPE_VOX, np.uint8)
    for code, label in _BRATS_LABEL_OF_TISSUE.items():
        labels[tissue == code] = label
    images = _mri_intensities(tissue, p, rng)
    return MriCase(f"BraTS-GLI-{index:05d}-000", images, labels, tissue, affine)


