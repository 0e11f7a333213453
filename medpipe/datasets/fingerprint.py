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

    def summary(self) -> CaseSummary:
        """What the fingerprint keeps of this case."""
        return CaseSummary(self.case_id, tuple(self.shape), tuple(round(s, 5) for s in self.spacing_mm),
                           self.orientation, dict(self.label_counts))


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


@dataclass(frozen=True)
class AxisStats:
    """Median, 10th percentile, minimum and maximum over cases, per RAS axis."""

    median: tuple[float, ...]
    p10: tuple[float, ...]
    minimum: tuple[float, ...]
    maximum: tuple[float, ...]

    @classmethod
    def of(cls, a: np.ndarray) -> AxisStats | None:
        if not len(a):
            return None
        r = lambda v: tuple(round(float(x), 5) for x in v)  # noqa: E731
        return cls(r(np.median(a, axis=0)), r(np.percentile(a, 10, axis=0)), r(a.min(axis=0)), r(a.max(axis=0)))

    def to_json(self) -> dict[str, list[float]]:
        return {"median": list(self.median), "p10": list(self.p10), "min": list(self.minimum),
                "max": list(self.maximum)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AxisStats | None:
        if not d:
            return None
        return cls(tuple(d["median"]), tuple(d["p10"]), tuple(d["min"]), tuple(d["max"]))


@dataclass(frozen=True)
class ClassStats:
    """Voxels of one label over the dataset, their fraction of all labelled voxels, and the cases it occurs in."""

    name: str
    voxels: int
    fraction: float
    cases_present: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "voxels": self.voxels, "fraction": self.fraction,
                "cases_present": self.cases_present}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClassStats:
        return cls(str(d["name"]), int(d["voxels"]), float(d["fraction"]), int(d["cases_present"]))


@dataclass(frozen=True)
class CaseSummary:
    """One case in the fingerprint: shape and spacing along the RAS axes, orientation, label voxel counts."""

    case_id: str
    shape_ras: tuple[int, ...]
    spacing_ras_mm: tuple[float, ...]
    orientation: str
    label_voxels: dict[int, int]

    def to_json(self) -> dict[str, Any]:
        return {"case_id": self.case_id, "shape_ras": list(self.shape_ras),
                "spacing_ras_mm": list(self.spacing_ras_mm), "orientation": self.orientation,
                "label_voxels": {str(k): v for k, v in self.label_voxels.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CaseSummary:
        return cls(str(d["case_id"]), tuple(int(v) for v in d["shape_ras"]),
                   tuple(float(v) for v in d["spacing_ras_mm"]), str(d["orientation"]),
                   {int(k): int(v) for k, v in d["label_voxels"].items()})


@dataclass(frozen=True)
class DatasetSummary:
    root: str
    layout: str
    n_cases: int
    n_checked: int
    channels: tuple[str, ...]
    labels: dict[int, str]
    regions: dict[str, tuple[int, ...]]

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "layout": self.layout, "n_cases": self.n_cases, "n_checked": self.n_checked,
                "channels": list(self.channels), "labels": {str(k): v for k, v in self.labels.items()},
                "regions": {k: list(v) for k, v in self.regions.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DatasetSummary:
        return cls(str(d["root"]), str(d["layout"]), int(d["n_cases"]), int(d["n_checked"]),
                   tuple(str(c) for c in d["channels"]), {int(k): str(v) for k, v in d["labels"].items()},
                   {str(k): tuple(int(x) for x in v) for k, v in d.get("regions", {}).items()})


@dataclass(frozen=True)
class Fingerprint:
    """What planning configures from (nnU-Net's idea): spacings and shapes along the RAS axes, foreground
    intensity statistics per channel (``p0_5``, ``p50``, ``p99_5``, ``mean``, ``std``, ``min``, ``max``), label
    statistics and every case, plus the dataset identity (:func:`data_identity`)."""

    dataset: DatasetSummary
    identity: str
    modality: str
    spacing_mm: AxisStats | None
    shape_vox: AxisStats | None
    intensity_foreground: dict[str, dict[str, float]]
    classes: dict[int, ClassStats]
    n_errors: int
    n_warnings: int
    cases: tuple[CaseSummary, ...]
    format: str = field(default=FINGERPRINT_FORMAT)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "dataset": self.dataset.to_json(),
            "identity": self.identity,
            "modality": self.modality,
            "spacing_mm": self.spacing_mm.to_json() if self.spacing_mm else {},
            "shape_vox": self.shape_vox.to_json() if self.shape_vox else {},
            "intensity_foreground": {k: dict(v) for k, v in self.intensity_foreground.items()},
            "classes": {str(k): v.to_json() for k, v in self.classes.items()},
            "n_errors": self.n_errors,
            "n_warnings": self.n_warnings,
            "cases": [c.to_json() for c in self.cases],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str | Path = "<fingerprint>") -> Fingerprint:
        if d.get("format") != FINGERPRINT_FORMAT:
            raise DatasetError(f"unknown fingerprint format {d.get('format')!r}", path=source,
                               hint=f"run `medpipe dataset check -o` again (this medpipe writes {FINGERPRINT_FORMAT})")
        try:
            return cls(DatasetSummary.from_json(d["dataset"]), str(d["identity"]), str(d["modality"]),
                       AxisStats.from_json(d["spacing_mm"]), AxisStats.from_json(d["shape_vox"]),
                       {str(k): {str(m): float(x) for m, x in v.items()} for k, v in d["intensity_foreground"].items()},
                       {int(k): ClassStats.from_json(v) for k, v in d["classes"].items()}, int(d["n_errors"]),
                       int(d["n_warnings"]), tuple(CaseSummary.from_json(c) for c in d["cases"]))
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"malformed fingerprint ({type(err).__name__}: {err})", path=source) from err


def build_fingerprint(ds: Dataset, facts: list[CaseFacts], labels: dict[int, str] | None,
                      channel_names: tuple[str, ...], issues: list[Issue]) -> Fingerprint:
    """The fingerprint of a checked dataset."""
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
    classes = {v: ClassStats(name, totals.get(v, 0), round(totals.get(v, 0) / all_voxels, 8), present.get(v, 0))
               for v, name in sorted(label_map.items())}
    return Fingerprint(
        dataset=DatasetSummary(str(ds.root), ds.format, len(ds.cases), len(facts), tuple(channel_names),
                               dict(label_map), {k: tuple(v) for k, v in ds.regions.items()}),
        identity=data_identity(ds.cases),
        modality=guess_modality(channel_names, intensity),
        spacing_mm=AxisStats.of(spacings),
        shape_vox=AxisStats.of(shapes),
        intensity_foreground=intensity,
        classes=classes,
        n_errors=sum(i.severity == "error" for i in issues),
        n_warnings=sum(i.severity == "warning" for i in issues),
        cases=tuple(f.summary() for f in facts),
    )
