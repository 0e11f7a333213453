"""The DICOM provenance record: what was read, every geometry decision and check, and every opt-in repair.

It travels from :mod:`medpipe.io.dicom.volume` into the ``medpipe convert`` sidecar and the inference sidecar
(``input``). It carries no patient data: series number, label, description and UIDs only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medpipe.errors import InputError
from medpipe.io.geometry import Grid

PROVENANCE_FORMAT = "medpipe-dicom-provenance/1"


@dataclass(frozen=True)
class SeriesSource:
    """The series a volume came from (``split_by``: the attributes that split one series into several volumes)."""

    series_uid: str
    series_number: int | None
    label: str
    description: str
    modality: str
    images: int
    split_by: dict[str, str]
    transfer_syntax: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"series_uid": self.series_uid, "series_number": self.series_number, "label": self.label,
                "description": self.description, "modality": self.modality, "images": self.images,
                "split_by": dict(self.split_by), "transfer_syntax": list(self.transfer_syntax)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SeriesSource:
        return cls(str(d["series_uid"]), d["series_number"], str(d["label"]), str(d["description"]),
                   str(d["modality"]), int(d["images"]), dict(d["split_by"]), tuple(d["transfer_syntax"]))


@dataclass(frozen=True)
class ScanSummary:
    """The folder scan: files seen, files skipped by reason, and the other volumes the folder holds."""

    files: int
    skipped: dict[str, int]
    other_volumes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "skipped": dict(self.skipped), "other_volumes": list(self.other_volumes)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ScanSummary:
        return cls(int(d["files"]), {str(k): int(v) for k, v in d["skipped"].items()}, tuple(d["other_volumes"]))


@dataclass(frozen=True)
class DetiltRepair:
    """Gantry tilt removed by a per-slice in-plane shift (``--allow-tilt``)."""

    reason: str
    method: str
    shift_px_range: tuple[tuple[float, float], tuple[float, float]]
    plane_before: tuple[int, int]
    plane_after: tuple[int, int]
    fill_value: float
    tilt_deg: float
    kind: str = "detilt"

    def to_json(self) -> dict[str, Any]:
        return {"repair": self.kind, "reason": self.reason, "method": self.method,
                "shift_px_range": [list(r) for r in self.shift_px_range], "plane_before": list(self.plane_before),
                "plane_after": list(self.plane_after), "fill_value": self.fill_value, "tilt_deg": self.tilt_deg}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DetiltRepair:
        u, v = d["shift_px_range"]
        return cls(str(d["reason"]), str(d["method"]), ((float(u[0]), float(u[1])), (float(v[0]), float(v[1]))),
                   (int(d["plane_before"][0]), int(d["plane_before"][1])),
                   (int(d["plane_after"][0]), int(d["plane_after"][1])), float(d["fill_value"]), float(d["tilt_deg"]))


@dataclass(frozen=True)
class EqualiseRepair:
    """Uneven or missing slices resampled to equal spacing (``--allow-uneven``)."""

    reason: str
    method: str
    rule: str
    slices_before: int
    slices_after: int
    gaps_before_mm: dict[str, float]
    spacing_mm: float
    kind: str = "equalise"

    def to_json(self) -> dict[str, Any]:
        return {"repair": self.kind, "reason": self.reason, "method": self.method, "rule": self.rule,
                "slices_before": self.slices_before, "slices_after": self.slices_after,
                "gaps_before_mm": dict(self.gaps_before_mm), "spacing_mm": self.spacing_mm}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EqualiseRepair:
        return cls(str(d["reason"]), str(d["method"]), str(d["rule"]), int(d["slices_before"]),
                   int(d["slices_after"]), {str(k): float(v) for k, v in d["gaps_before_mm"].items()},
                   float(d["spacing_mm"]))


Repair = DetiltRepair | EqualiseRepair


def repair_from_json(d: dict[str, Any]) -> Repair:
    kinds: dict[str, type[DetiltRepair] | type[EqualiseRepair]] = {"detilt": DetiltRepair, "equalise": EqualiseRepair}
    kind = kinds.get(str(d.get("repair")))
    if kind is None:
        raise InputError(f"unknown repair {d.get('repair')!r} in a provenance record", hint="detilt or equalise")
    return kind.from_json(d)


@dataclass(frozen=True)
class ValueSummary:
    """How stored values became the volume's values (modality LUT), masked high bits, and the value range."""

    transform: str
    high_bits_masked_voxels: int
    minimum: float
    maximum: float

    def to_json(self) -> dict[str, Any]:
        return {"transform": self.transform, "high_bits_masked_voxels": self.high_bits_masked_voxels,
                "min": self.minimum, "max": self.maximum}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ValueSummary:
        return cls(str(d["transform"]), int(d["high_bits_masked_voxels"]), float(d["min"]), float(d["max"]))


@dataclass(frozen=True)
class DicomProvenance:
    """Everything about how one DICOM volume was read (see the module docstring)."""

    source: SeriesSource
    scan: ScanSummary
    decisions: tuple[str, ...]
    checks: dict[str, str]
    repairs: tuple[Repair, ...]
    values: ValueSummary
    warnings: tuple[str, ...]
    geometry: Grid
    format: str = field(default=PROVENANCE_FORMAT)

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "source": self.source.to_json(), "scan": self.scan.to_json(),
                "decisions": list(self.decisions), "checks": dict(self.checks),
                "repairs": [r.to_json() for r in self.repairs], "values": self.values.to_json(),
                "warnings": list(self.warnings), "geometry": self.geometry.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DicomProvenance:
        if d.get("format") != PROVENANCE_FORMAT:
            raise InputError(f"unknown DICOM provenance format {d.get('format')!r}",
                             hint=f"this medpipe reads {PROVENANCE_FORMAT}")
        return cls(SeriesSource.from_json(d["source"]), ScanSummary.from_json(d["scan"]), tuple(d["decisions"]),
                   {str(k): str(v) for k, v in d["checks"].items()}, tuple(repair_from_json(r) for r in d["repairs"]),
                   ValueSummary.from_json(d["values"]), tuple(d["warnings"]), Grid.from_json(d["geometry"]))
