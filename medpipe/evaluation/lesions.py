"""Lesion tables: the connected components of each label of a mask, measured in millimetres on its grid.

Per label value, every connected component (26-connectivity by default) is one lesion with: its voxel count,
volume (mL, from the affine), centroid in world coordinates (RAS mm, NIfTI convention), bounding box (voxel
indices, inclusive), maximum 3D diameter (mm, largest distance between two voxel centres of the lesion) and,
when a probability map is given, the mean and maximum probability of its label over its voxels. Lesions are
numbered per label from 1, largest first. Components below ``min_volume_ml`` are left out (and counted).

Pure numpy/scipy: no torch, no I/O except :func:`write_lesion_csv`. Columns are documented in ``docs/lesions.md``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medpipe.errors import InputError
from medpipe.io.atomic import write_text_atomic
from medpipe.io.geometry import Grid

#: Version of the lesion-table record (JSON) and of the CSV columns.
LESION_FORMAT_VERSION = 1

#: Columns of ``<case>.lesions.csv``, in order.
CSV_COLUMNS = ("case", "label", "label_name", "lesion", "voxels", "volume_ml", "centroid_r_mm", "centroid_a_mm",
               "centroid_s_mm", "bbox_i0", "bbox_j0", "bbox_k0", "bbox_i1", "bbox_j1", "bbox_k1", "max_diameter_mm",
               "mean_probability", "max_probability")

#: Probabilities: a (C, I, J, K) array whose channel index is the label value, or label value -> (I, J, K) array;
#: float in [0, 1], or uint8 bytes read as byte / 255 (the quantisation of ``--save-probabilities``).
Probabilities = np.ndarray | Mapping[int, np.ndarray]

_CONNECTIVITY = {6: 1, 18: 2, 26: 3}


@dataclass(frozen=True)
class Lesion:
    """One connected component of one label. Coordinates: world RAS mm; ``bbox_*_vox``: voxel indices (I, J, K),
    both ends inclusive. Probabilities are ``None`` when no probability map was given."""

    label: int
    label_name: str
    lesion: int
    voxels: int
    volume_ml: float
    centroid_ras_mm: tuple[float, float, float]
    bbox_lo_vox: tuple[int, int, int]
    bbox_hi_vox: tuple[int, int, int]
    max_diameter_mm: float
    mean_probability: float | None = None
    max_probability: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "label_name": self.label_name, "lesion": self.lesion, "voxels": self.voxels,
                "volume_ml": self.volume_ml, "centroid_ras_mm": list(self.centroid_ras_mm),
                "bbox_lo_vox": list(self.bbox_lo_vox), "bbox_hi_vox": list(self.bbox_hi_vox),
                "max_diameter_mm": self.max_diameter_mm, "mean_probability": self.mean_probability,
                "max_probability": self.max_probability}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Lesion:
        return cls(int(d["label"]), str(d["label_name"]), int(d["lesion"]), int(d["voxels"]), float(d["volume_ml"]),
                   _triple(d["centroid_ras_mm"], float), _triple(d["bbox_lo_vox"], int),
                   _triple(d["bbox_hi_vox"], int), float(d["max_diameter_mm"]),
                   _opt_float(d.get("mean_probability")), _opt_float(d.get("max_probability")))

    def csv_row(self, case: str) -> list[str]:
        return [case, str(self.label), self.label_name, str(self.lesion), str(self.voxels), f"{self.volume_ml:.6f}",
                *(f"{v:.3f}" for v in self.centroid_ras_mm), *(str(v) for v in self.bbox_lo_vox),
                *(str(v) for v in self.bbox_hi_vox), f"{self.max_diameter_mm:.3f}",
                _opt_text(self.mean_probability), _opt_text(self.max_probability)]


@dataclass(frozen=True)
class LesionTable:
    """The lesions of one case. ``removed``: per label, components left out for being below ``min_volume_ml``."""

    case: str
    lesions: tuple[Lesion, ...]
    min_volume_ml: float = 0.0
    connectivity: int = 26
    removed: dict[int, int] = field(default_factory=dict)
    has_probabilities: bool = False
    format_version: int = LESION_FORMAT_VERSION

    def for_label(self, label: int) -> list[Lesion]:
        return [les for les in self.lesions if les.label == label]

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "case": self.case, "min_volume_ml": self.min_volume_ml,
                "connectivity": self.connectivity, "removed": {str(k): v for k, v in self.removed.items()},
                "has_probabilities": self.has_probabilities, "lesions": [les.to_json() for les in self.lesions]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LesionTable:
        version = int(d.get("format_version", 0))
        if version != LESION_FORMAT_VERSION:
            raise InputError(f"lesion table format {version}, expected {LESION_FORMAT_VERSION}")
        return cls(str(d["case"]), tuple(Lesion.from_json(x) for x in d["lesions"]), float(d["min_volume_ml"]),
                   int(d["connectivity"]), {int(k): int(v) for k, v in d["removed"].items()},
                   bool(d["has_probabilities"]), version)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for les in self.lesions:
            writer.writerow(les.csv_row(self.case))
        return buf.getvalue()

    def summary(self, file_name: str | None = None) -> LesionSummary:
        """The sidecar entry: settings and, per label, the lesion count, total and largest volume (mL)."""
        labels = sorted({les.label for les in self.lesions} | set(self.removed))
        per_label = {}
        for value in labels:
            mine = self.for_label(value)
            per_label[value] = LabelLesions(
                mine[0].label_name if mine else "", len(mine), round(sum(les.volume_ml for les in mine), 6),
                round(max((les.volume_ml for les in mine), default=0.0), 6), self.removed.get(value, 0))
        return LesionSummary(file_name, self.min_volume_ml, self.connectivity, self.has_probabilities, per_label,
                             self.format_version)


@dataclass(frozen=True)
class LabelLesions:
    """One label's lesions in a case: count, total and largest volume (mL), components left out as too small."""

    name: str
    count: int
    total_ml: float
    largest_ml: float
    removed_below_min: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "count": self.count, "total_ml": self.total_ml, "largest_ml": self.largest_ml,
                "removed_below_min": self.removed_below_min}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LabelLesions:
        return cls(str(d["name"]), int(d["count"]), float(d["total_ml"]), float(d["largest_ml"]),
                   int(d["removed_below_min"]))


@dataclass(frozen=True)
class LesionSummary:
    """The sidecar's summary of a case's lesion table (``<case>.lesions.csv``)."""

    file: str | None
    min_volume_ml: float
    connectivity: int
    probabilities: bool
    labels: dict[int, LabelLesions]
    format_version: int = LESION_FORMAT_VERSION

    @property
    def n_lesions(self) -> int:
        return sum(v.count for v in self.labels.values())

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "file": self.file, "min_volume_ml": self.min_volume_ml,
                "connectivity": self.connectivity, "probabilities": self.probabilities,
                "labels": {str(k): v.to_json() for k, v in self.labels.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LesionSummary:
        return cls(d.get("file"), float(d["min_volume_ml"]), int(d["connectivity"]), bool(d["probabilities"]),
                   {int(k): LabelLesions.from_json(v) for k, v in d["labels"].items()},
                   int(d.get("format_version", LESION_FORMAT_VERSION)))


def _triple(v: Any, kind: type) -> Any:
    return (kind(v[0]), kind(v[1]), kind(v[2]))


def _opt_float(v: Any) -> float | None:
    return None if v is None or v == "" else float(v)


def _opt_text(v: float | None) -> str:
    return "" if v is None else f"{v:.6f}"


def max_diameter_mm(points_mm: np.ndarray) -> float:
    """Largest distance (mm) between two of the (N, 3) points; 0 for fewer than two. The farthest pair lies on
    the convex hull, so only hull vertices are compared (all points when the hull is degenerate, e.g. flat)."""
    if len(points_mm) < 2:
        return 0.0
    pts = points_mm
    if len(pts) > 64:
        from scipy.spatial import ConvexHull, QhullError

        try:
            pts = pts[ConvexHull(pts, qhull_options="QJ").vertices]  # QJ: joggled, so flat sets work too
        except QhullError:  # still degenerate: compare them all, in memory-bounded chunks
            pts = points_mm
    best = 0.0
    chunk = max(1, 4_000_000 // len(pts))
    for start in range(0, len(pts), chunk):
        d = np.linalg.norm(pts[start:start + chunk, None, :] - pts[None, :, :], axis=-1)
        best = max(best, float(d.max()))
    return best


def _probability_for(probabilities: Probabilities | None, label: int, shape: tuple[int, ...]) -> np.ndarray | None:
    if probabilities is None:
        return None
    if isinstance(probabilities, np.ndarray):
        if probabilities.ndim != 4 or probabilities.shape[1:] != shape or label >= probabilities.shape[0]:
            raise InputError(f"probabilities of shape {probabilities.shape}, expected (C, {', '.join(map(str, shape))})"
                             f" with a channel for label {label}")
        return probabilities[label]
    if label not in probabilities:
        return None
    prob = np.asarray(probabilities[label])
    if prob.shape != shape:
        raise InputError(f"probability map of label {label} has shape {prob.shape}, expected {shape} (the mask grid)")
    return prob


def label_components(binary: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, int]:
    """``scipy.ndimage.label`` into uint16 when the components fit (2 bytes per voxel instead of int32's 4: a
    512 x 512 x 1000 mask's labelling is 0.5 GiB, not 1 GiB), else int32."""
    out = np.empty(binary.shape, dtype=np.uint16)
    try:
        n = int(ndi.label(binary, structure=structure, output=out))
    except RuntimeError:  # more than 65535 components
        del out
        cc, n = ndi.label(binary, structure=structure)
        return cc, int(n)
    return out, n


def lesion_table(mask: np.ndarray, grid: Grid, *, case: str = "", labels: Mapping[int, str] | None = None,
                 probabilities: Probabilities | None = None, min_volume_ml: float = 0.0,
                 connectivity: int = 26) -> LesionTable:
    """The lesions of an integer label map ``mask`` (I, J, K) on ``grid``.

    ``labels``: value -> name; the values measured (default: every non-zero value present). ``probabilities``:
    optional per-label probability maps on the mask grid (see :data:`Probabilities`); a label without one gets
    empty probability columns. ``min_volume_ml``: components with a smaller volume are left out and counted in
    ``removed``. ``connectivity``: 6, 18 or 26 (face, edge, corner neighbours).
    """
    if mask.shape != grid.shape:
        raise InputError(f"mask shape {mask.shape} does not match its grid {grid.shape}")
    if connectivity not in _CONNECTIVITY:
        raise InputError(f"connectivity {connectivity}, expected 6, 18 or 26")
    if min_volume_ml < 0 or not math.isfinite(min_volume_ml):
        raise InputError(f"minimum lesion volume {min_volume_ml} mL, expected a finite value >= 0")
    structure = ndi.generate_binary_structure(3, _CONNECTIVITY[connectivity])
    voxel_ml = abs(float(np.linalg.det(grid.affine[:3, :3]))) / 1000.0
    values = sorted(v for v in (labels or {}) if v != 0) if labels else sorted(int(v) for v in np.unique(mask) if v)
    out: list[Lesion] = []
    removed: dict[int, int] = {}
    for value in values:
        cc, n = label_components(mask == value, structure)
        prob = _probability_for(probabilities, value, mask.shape)
        found: list[Lesion] = []
        for idx, box in enumerate(ndi.find_objects(cc, max_label=n), start=1):
            if box is None:
                continue
            component = cc[box] == idx
            voxels = int(component.sum())
            if voxels * voxel_ml < min_volume_ml:
                removed[value] = removed.get(value, 0) + 1
                continue
            found.append(_measure(component, box, grid, value, (labels or {}).get(value, ""), voxels * voxel_ml,
                                  None if prob is None else prob[box][component]))
        found.sort(key=lambda les: -les.voxels)  # stable: equal sizes keep raster order
        out += [_renumber(les, i) for i, les in enumerate(found, start=1)]
    return LesionTable(case, tuple(out), float(min_volume_ml), connectivity, removed, probabilities is not None)


def _measure(component: np.ndarray, box: tuple[slice, ...], grid: Grid, value: int, name: str, volume_ml: float,
             prob: np.ndarray | None) -> Lesion:
    """One lesion's row. Memory stays a few bytes per voxel of the component's box: the centroid comes from the
    voxel counts projected on each axis, the diameter from each line's two end voxels (no (N, 3) index arrays, which
    cost 48 bytes per voxel of a component that may fill most of a 512x512x1000 scan)."""
    offset = np.array([s.start for s in box], dtype=float)
    voxels = int(np.count_nonzero(component))
    mean_index = np.array([np.arange(component.shape[a], dtype=float)
                           @ np.count_nonzero(component, axis=tuple(b for b in range(3) if b != a)).astype(float)
                           for a in range(3)]) / voxels
    centroid = grid.affine[:3, :3] @ (mean_index + offset) + grid.affine[:3, 3]
    edge_mm = (_line_ends(component) + offset) @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    lo = tuple(int(s.start) for s in box)
    hi = tuple(int(s.stop) - 1 for s in box)
    mean_p = max_p = None
    if prob is not None and prob.size:
        scale = 1.0 / 255.0 if prob.dtype == np.uint8 else 1.0
        mean_p, max_p = float(prob.mean(dtype=np.float64)) * scale, float(prob.max()) * scale
    return Lesion(value, name, 0, voxels, float(volume_ml),
                  (float(centroid[0]), float(centroid[1]), float(centroid[2])),
                  (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2]), max_diameter_mm(edge_mm), mean_p, max_p)


def _line_ends(component: np.ndarray) -> np.ndarray:
    """The first and last voxel of the component on each line along the last axis, as (N, 3) voxel indices. Every
    other voxel lies between two of these, so they hold the convex hull's vertices, hence the farthest pair."""
    hit = component.any(axis=2)
    first = np.argmax(component, axis=2)
    last = component.shape[2] - 1 - np.argmax(component[:, :, ::-1], axis=2)
    i, j = np.nonzero(hit)
    ends = np.concatenate([np.stack([i, j, first[i, j]], axis=1), np.stack([i, j, last[i, j]], axis=1)])
    return np.unique(ends, axis=0).astype(float)


def _renumber(les: Lesion, number: int) -> Lesion:
    return replace(les, lesion=number)


def write_lesion_csv(path: str | Path, table: LesionTable) -> Path:
    """Write ``table`` as CSV (columns :data:`CSV_COLUMNS`) atomically."""
    write_text_atomic(path, table.to_csv())
    return Path(path)


def write_lesions(path: Path, mask: np.ndarray, grid: Grid, labels: Mapping[int, str], min_volume_ml: float,
                  probabilities: Probabilities | None = None) -> LesionSummary:
    """Measure the lesions of ``mask`` and write them to ``path`` (``<case>.lesions.csv``); returns the sidecar
    entry (:meth:`LesionTable.summary`). The case id is the file name without ``.lesions.csv``."""
    case = path.name.removesuffix(".lesions.csv")
    table = lesion_table(mask, grid, case=case, labels=labels, probabilities=probabilities,
                         min_volume_ml=min_volume_ml)
    write_lesion_csv(path, table)
    return table.summary(path.name)


def read_lesion_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``<case>.lesions.csv`` as dicts (column -> text); an :class:`InputError` if it is not one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read lesion table: {err}", path=path) from err
    rows = list(csv.DictReader(io.StringIO(text)))
    header = text.splitlines()[0].split(",") if text else []
    if tuple(header) != CSV_COLUMNS:
        raise InputError(f"not a lesion table: columns {header[:4]}..., expected {list(CSV_COLUMNS[:4])}...",
                         path=path)
    return rows
