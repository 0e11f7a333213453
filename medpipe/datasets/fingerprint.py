"""Dataset fingerprint (what :mod:`medpipe.datasets.plan` configures from) and dataset identity (what a plan or a
resumed run compares against).

Identity: per file, its name, size and a content digest that costs one seek: for ``.nii.gz`` the gzip trailer
(CRC-32 and length of the *uncompressed* data, so any voxel or header change shows), for ``.nii`` a sha256 of
the whole file. Renaming or moving the dataset folder keeps the identity; editing one voxel changes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medpipe.datasets.layouts import Case, Dataset, Issue
from medpipe.errors import DatasetError
from medpipe.io.geometry import Grid
from medpipe.runtime import sha256_file, short_digest

FINGERPRINT_FORMAT = "medpipe-fingerprint/1"
PERCENTILES = (0.5, 50.0, 99.5)


@dataclass
class CaseFacts:
    """What one case holds: shape and spacing (mm) along the RAS axes (the network's axes after reorientation,
    whatever the file's voxel order), the file's orientation, label voxel counts, an image hash and a sample of
    foreground intensities per channel."""

    case_id: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: str
    n_channels: int
    label_counts: dict[int, int] = field(default_factory=dict)
    image_sha256: str = ""
    fg_samples: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def from_grid(cls, case_id: str, grid: Grid, n_channels: int) -> CaseFacts:
        axes = nib.io_orientation(grid.affine)[:, 0].astype(int)  # world axis of each array axis
        shape, spacing = [0, 0, 0], [0.0, 0.0, 0.0]
        for i, w in enumerate(axes):
            shape[w], spacing[w] = grid.shape[i], grid.spacing_mm[i]
        return cls(case_id, (shape[0], shape[1], shape[2]), (spacing[0], spacing[1], spacing[2]), grid.orientation,
                   n_channels)

    def to_json(self) -> dict[str, Any]:
        return {"case_id": self.case_id, "shape_ras": list(self.shape),
                "spacing_ras_mm": [round(s, 5) for s in self.spacing_mm], "orientation": self.orientation,
                "label_voxels": {str(k): v for k, v in self.label_counts.items()}}


def _file_digest(path: Path) -> str:
    try:
        size = path.stat().st_size
        if path.name.endswith(".gz") and size >= 18:
            with path.open("rb") as fh:
                fh.seek(-8, 2)
                return f"{size}:{fh.read(8).hex()}"
        return f"{size}:{sha256_file(path)}"
    except OSError as err:
        raise DatasetError(f"cannot read file ({err.strerror or err})", path=path) from err


def data_identity(cases: list[Case] | tuple[Case, ...]) -> str:
    """A short hash of the cases' ids, file names and contents (see the module docstring)."""
    lines = []
    for c in sorted(cases, key=lambda c: c.case_id):
        for p in (*c.images, *([c.label] if c.label else [])):
            lines.append(f"{c.case_id}|{p.name}|{_file_digest(p)}\n")
    return short_digest("".join(lines).encode())


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    pct = np.percentile(values, PERCENTILES)
    out = {f"p{str(p).replace('.', '_')}": round(float(v), 4) for p, v in zip(PERCENTILES, pct, strict=True)}
    out.update(mean=round(float(values.mean()), 4), std=round(float(values.std()), 4),
               min=round(float(values.min()), 4), max=round(float(values.max()), 4))
    return out


def guess_modality(channel_names: tuple[str, ...], intensity: dict[str, dict[str, float]]) -> str:
    """CT when a channel is called CT, or when foreground intensities look like Hounsfield units."""
    if any(n.strip().upper() == "CT" for n in channel_names):
        return "CT"
    first = next(iter(intensity.values()), {})
    if first and first["min"] <= -500 and -300 <= first["p50"] <= 1500 and len(channel_names) == 1:
        return "CT"
    return "MR"


def build_fingerprint(ds: Dataset, facts: list[CaseFacts], labels: dict[int, str] | None,
                      channel_names: tuple[str, ...], issues: list[Issue]) -> dict[str, Any]:
    """The JSON-serialisable fingerprint of a checked dataset."""
    spacings = np.array([f.spacing_mm for f in facts]) if facts else np.zeros((0, 3))
    shapes = np.array([f.shape for f in facts]) if facts else np.zeros((0, 3))
    intensity: dict[str, dict[str, float]] = {}
    for c, name in enumerate(channel_names):
        pooled = [f.fg_samples[c] for f in facts if len(f.fg_samples) > c]
        intensity[name] = _stats(np.concatenate(pooled)) if pooled else {}
    totals: dict[int, int] = {}
    present: dict[int, int] = {}
    for f in facts:
        for v, n in f.label_counts.items():
            totals[v] = totals.get(v, 0) + n
            present[v] = present.get(v, 0) + (n > 0)
    all_voxels = sum(totals.values()) or 1
    label_map = labels if labels is not None else {v: f"label_{v}" for v in sorted(totals)}
    classes = {str(v): {"name": name, "voxels": totals.get(v, 0), "fraction": round(totals.get(v, 0) / all_voxels, 8),
                        "cases_present": present.get(v, 0)} for v, name in sorted(label_map.items())}

    def axis_stats(a: np.ndarray) -> dict[str, list[float]]:
        if not len(a):
            return {}
        return {"median": [round(float(v), 5) for v in np.median(a, axis=0)],
                "p10": [round(float(v), 5) for v in np.percentile(a, 10, axis=0)],
                "min": [round(float(v), 5) for v in a.min(axis=0)], "max": [round(float(v), 5) for v in a.max(axis=0)]}

    return {
        "format": FINGERPRINT_FORMAT,
        "dataset": {"root": str(ds.root), "layout": ds.format, "n_cases": len(ds.cases), "n_checked": len(facts),
                    "channels": list(channel_names), "labels": {str(k): v for k, v in label_map.items()},
                    "regions": {k: list(v) for k, v in ds.regions.items()}},
        "identity": data_identity(ds.cases),
        "modality": guess_modality(channel_names, intensity),
        "spacing_mm": axis_stats(spacings),
        "shape_vox": axis_stats(shapes),
        "intensity_foreground": intensity,
        "classes": classes,
        "n_errors": sum(i.severity == "error" for i in issues),
        "n_warnings": sum(i.severity == "warning" for i in issues),
        "cases": [f.to_json() for f in facts],
    }
