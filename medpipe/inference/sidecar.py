"""The inference sidecar: what was run on which input, beside every mask; and the resume rule built on it.

``<case>.json`` is the JSON form of :class:`InferenceSidecar`. A re-run skips a case whose mask and sidecar exist
for the same input (sha256), model (sha256) and config hash (:func:`already_done`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpipe.errors import InputError
from medpipe.evaluation.lesions import LesionSummary
from medpipe.inference.inputs import InputProvenance, LoadedCase
from medpipe.inference.qc import CaseQC
from medpipe.io.dicom.seg import DicomOutput
from medpipe.io.geometry import Grid
from medpipe.io.intensity import HuCheck

SIDECAR_FORMAT = "medpipe-inference-sidecar/1"
#: Keys of the sidecar's ``outputs`` beside ``nifti``: DICOM objects and voxel maps.
DICOM_KINDS = ("dicom-seg", "rtstruct")
MAP_KINDS = ("probabilities", "uncertainty")


@dataclass(frozen=True)
class ModelRef:
    """Which weights ran: the checkpoint file name (never its folder), its sha256 and the architecture."""

    checkpoint: str
    sha256: str
    arch: str
    n_models: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "sha256": self.sha256, "arch": self.arch, "n_models": self.n_models}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelRef:
        return cls(str(d["checkpoint"]), str(d["sha256"]), str(d["arch"]), int(d.get("n_models", 1)))


@dataclass(frozen=True)
class SlidingWindowSettings:
    roi_size_vox: tuple[int, ...]
    overlap: float
    sw_batch_size: int
    blend: str

    def to_json(self) -> dict[str, Any]:
        return {"roi_size_vox": list(self.roi_size_vox), "overlap": self.overlap,
                "sw_batch_size": self.sw_batch_size, "blend": self.blend}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SlidingWindowSettings:
        return cls(tuple(int(v) for v in d["roi_size_vox"]), float(d["overlap"]), int(d["sw_batch_size"]),
                   str(d["blend"]))


@dataclass(frozen=True)
class MemberRef:
    """One model of an ensemble: its checkpoint file name, sha256, fold and architecture."""

    checkpoint: str
    sha256: str
    fold: int | None
    arch: str

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "sha256": self.sha256, "fold": self.fold, "arch": self.arch}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MemberRef:
        fold = d.get("fold")
        return cls(str(d["checkpoint"]), str(d["sha256"]), None if fold is None else int(fold), str(d["arch"]))


@dataclass(frozen=True)
class EnsembleInfo:
    """What was averaged: the models, their folds, the mirror TTA setting, the allowed axes and every pass."""

    models: tuple[MemberRef, ...]
    folds: tuple[int | None, ...]
    tta: str
    mirror_axes: tuple[int, ...]
    passes: tuple[tuple[int, ...], ...]
    n_passes: int

    def to_json(self) -> dict[str, Any]:
        return {"models": [m.to_json() for m in self.models], "folds": list(self.folds), "tta": self.tta,
                "mirror_axes": list(self.mirror_axes), "passes": [list(p) for p in self.passes],
                "n_passes": self.n_passes}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EnsembleInfo:
        return cls(tuple(MemberRef.from_json(m) for m in d["models"]),
                   tuple(None if f is None else int(f) for f in d["folds"]), str(d["tta"]),
                   tuple(int(a) for a in d["mirror_axes"]), tuple(tuple(int(a) for a in p) for p in d["passes"]),
                   int(d["n_passes"]))


@dataclass(frozen=True)
class MapOutput:
    """A probability or uncertainty map written beside the mask (uint8 frames, value = stored × ``scale``)."""

    file: str
    dtype: str
    scale: float
    frames: tuple[str, ...]
    normalised_by: str | None = None
    n_passes: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "dtype": self.dtype, "scale": self.scale,
                               "frames": list(self.frames)}
        if self.normalised_by is not None:
            out["normalised_by"] = self.normalised_by
        if self.n_passes is not None:
            out["n_passes"] = self.n_passes
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MapOutput:
        n = d.get("n_passes")
        return cls(str(d["file"]), str(d["dtype"]), float(d["scale"]), tuple(str(f) for f in d["frames"]),
                   d.get("normalised_by"), None if n is None else int(n))


@dataclass(frozen=True)
class MemoryPeaks:
    """Peak host RSS and peak device memory (MiB; device None on the CPU) while the case ran."""

    host_rss_peak_mb: float | None
    device_peak_mb: float | None

    def to_json(self) -> dict[str, Any]:
        return {"host_rss_peak_mb": self.host_rss_peak_mb, "device_peak_mb": self.device_peak_mb}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MemoryPeaks:
        h, g = d.get("host_rss_peak_mb"), d.get("device_peak_mb")
        return cls(None if h is None else float(h), None if g is None else float(g))


@dataclass(frozen=True)
class SlabSplit:
    """How a long scan was split (:mod:`medpipe.inference.slabs`): slabs along one network axis, each run with
    ``margin_vox`` network voxels (at most) of overlap on either side of the core it keeps."""

    n_slabs: int
    network_axis: int
    margin_vox: int
    max_slab_voxels: int

    def to_json(self) -> dict[str, Any]:
        return {"n_slabs": self.n_slabs, "network_axis": self.network_axis, "margin_vox": self.margin_vox,
                "max_slab_voxels": self.max_slab_voxels}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SlabSplit:
        return cls(int(d["n_slabs"]), int(d["network_axis"]), int(d["margin_vox"]), int(d["max_slab_voxels"]))


@dataclass(frozen=True)
class SegmentDetails:
    """What the predictor reports for one case: the network grid (shape after preprocessing, target spacing in
    mm), the memory rung the sliding window ran on, and the seconds of each stage."""

    network_shape: tuple[int, ...]
    network_spacing_mm: tuple[float, ...]
    memory_rung: str
    preprocess_s: float
    inference_s: float
    export_s: float
    engine: str = "torch"
    folds: int = 1
    stitch_dtype: str = "float32"
    ensemble: EnsembleInfo | None = None
    #: Set when the scan was split into slabs along its slice axis (None: run whole).
    split: SlabSplit | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "network_grid": {"shape": list(self.network_shape), "spacing_mm": list(self.network_spacing_mm)},
            "memory_rung": self.memory_rung,
            "split": self.split.to_json() if self.split is not None else None,
            "engine": self.engine,
            "folds": self.folds,
            "stitch_dtype": self.stitch_dtype,
            **({"ensemble": self.ensemble.to_json()} if self.ensemble is not None else {}),
            "timings_s": {"preprocess": self.preprocess_s, "inference": self.inference_s, "export": self.export_s},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SegmentDetails:
        net, t = d["network_grid"], d["timings_s"]
        return cls(tuple(int(v) for v in net["shape"]), tuple(float(v) for v in net["spacing_mm"]),
                   str(d["memory_rung"]), float(t["preprocess"]), float(t["inference"]), float(t["export"]),
                   str(d.get("engine", "torch")), int(d.get("folds", 1)), str(d.get("stitch_dtype", "float32")),
                   EnsembleInfo.from_json(d["ensemble"]) if isinstance(d.get("ensemble"), dict) else None,
                   SlabSplit.from_json(d["split"]) if isinstance(d.get("split"), dict) else None)


@dataclass(frozen=True)
class CasePush:
    """The push of one case's SEG: ``status`` ok (the server confirmed it) or failed (``reason`` says why)."""

    server: str
    file: str
    status: str
    sop_instance_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {"server": self.server, "file": self.file, "status": self.status,
                "sop_instance_uid": self.sop_instance_uid, "study_uid": self.study_uid,
                "series_uid": self.series_uid, "reason": self.reason}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CasePush:
        return cls(str(d["server"]), str(d["file"]), str(d["status"]), d.get("sop_instance_uid"), d.get("study_uid"),
                   d.get("series_uid"), d.get("reason"))


@dataclass(frozen=True)
class InferenceSidecar:
    """Provenance of one mask (see the module docstring). ``labels``: label value -> name."""

    case: str
    mask: str
    input_sha256: str
    model: ModelRef
    config_hash: str
    labels: dict[int, str]
    source_grid: Grid
    device: str
    sliding_window: SlidingWindowSettings
    input: InputProvenance
    details: SegmentDetails
    seconds_total: float
    versions: dict[str, str]
    intensity_check: HuCheck | None = None
    #: Where the input lies far outside the spacing/intensity range the model was trained on (empty: inside it).
    out_of_training_range: tuple[str, ...] = ()
    status: str = "ok"
    dicomweb_push: CasePush | None = None
    dicom_outputs: dict[str, DicomOutput] = field(default_factory=dict)
    lesions: LesionSummary | None = None
    qc: CaseQC | None = None
    maps: dict[str, MapOutput] = field(default_factory=dict)
    memory: MemoryPeaks | None = None
    format: str = field(default=SIDECAR_FORMAT)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format,
            "case": self.case,
            "mask": self.mask,
            "status": self.status,
            "input_sha256": self.input_sha256,
            "model": self.model.to_json(),
            "config_hash": self.config_hash,
            "labels": {str(k): v for k, v in self.labels.items()},
            "source_grid": self.source_grid.to_json(),
            "device": self.device,
            "sliding_window": self.sliding_window.to_json(),
            "input": self.input.to_json(),
            **self.details.to_json(),
            "outputs": {"nifti": self.mask, **{k: v.to_json() for k, v in self.dicom_outputs.items()},
                        **{k: v.to_json() for k, v in self.maps.items()}},
        }
        if self.qc is not None:
            out["qc"] = self.qc.to_json()
        if self.memory is not None:
            out["memory"] = self.memory.to_json()
        if self.intensity_check is not None:
            out["intensity_check"] = self.intensity_check.to_json()
        out["out_of_training_range"] = list(self.out_of_training_range)
        out["seconds_total"] = self.seconds_total
        out["versions"] = dict(self.versions)
        if self.lesions is not None:
            out["lesions"] = self.lesions.to_json()
        if self.dicomweb_push is not None:
            out["dicomweb_push"] = self.dicomweb_push.to_json()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InferenceSidecar:
        if d.get("format") != SIDECAR_FORMAT:
            raise InputError(f"unknown sidecar format {d.get('format')!r}",
                             hint=f"this medpipe writes {SIDECAR_FORMAT}")
        hu, push, les = d.get("intensity_check"), d.get("dicomweb_push"), d.get("lesions")
        qc, mem, outputs = d.get("qc"), d.get("memory"), d.get("outputs", {})
        return cls(
            case=str(d["case"]), mask=str(d["mask"]), input_sha256=str(d["input_sha256"]),
            model=ModelRef.from_json(d["model"]), config_hash=str(d["config_hash"]),
            labels={int(k): str(v) for k, v in d["labels"].items()}, source_grid=Grid.from_json(d["source_grid"]),
            device=str(d["device"]), sliding_window=SlidingWindowSettings.from_json(d["sliding_window"]),
            input=InputProvenance.from_json(d["input"]), details=SegmentDetails.from_json(d),
            seconds_total=float(d["seconds_total"]), versions={str(k): str(v) for k, v in d["versions"].items()},
            intensity_check=HuCheck.from_json(hu) if isinstance(hu, dict) else None, status=str(d["status"]),
            dicomweb_push=CasePush.from_json(push) if isinstance(push, dict) else None,
            dicom_outputs={k: DicomOutput.from_json(v) for k, v in outputs.items() if k in DICOM_KINDS},
            maps={k: MapOutput.from_json(v) for k, v in outputs.items() if k in MAP_KINDS},
            qc=CaseQC.from_json(qc) if isinstance(qc, dict) else None,
            memory=MemoryPeaks.from_json(mem) if isinstance(mem, dict) else None,
            lesions=LesionSummary.from_json(les) if isinstance(les, dict) else None,
            out_of_training_range=tuple(str(x) for x in d.get("out_of_training_range", ())),
        )


def read_sidecar(path: Path) -> InferenceSidecar | None:
    """The sidecar at ``path``, or None when it is missing, unreadable or of another format (then not done)."""
    try:
        return InferenceSidecar.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return None


def already_done(out_dir: Path, case: LoadedCase, model_sha256: str, config_hash: str,
                 formats: Sequence[str] = ("nifti",), extra: Sequence[str] = ()) -> Path | None:
    """The mask of ``case`` when a previous run made it from the same input, model and config, and wrote every
    requested output format and every ``extra`` file (e.g. ``<case>_probabilities.nii.gz``); else None."""
    mask = out_dir / f"{case.case_id}.nii.gz"
    side = read_sidecar(out_dir / f"{case.case_id}.json")
    if side is None or not mask.is_file():
        return None
    same = (side.input_sha256 == case.input_sha256 and side.config_hash == config_hash
            and side.model.sha256 == model_sha256 and side.status == "ok")
    outputs = all(f in side.dicom_outputs and (out_dir / side.dicom_outputs[f].file).is_file()
                  for f in formats if f != "nifti")
    tables = (out_dir / f"{case.case_id}.lesions.csv").is_file()
    extras = all((out_dir / name).is_file() for name in extra)
    return mask if same and outputs and tables and extras else None
