"""The package manifest (``medpipe.json``): typed, frozen records and their JSON schema; no torch imported here.

A medpipe package is a zip (or the same files unpacked in a folder) holding ``medpipe.json`` plus weights as
safetensors, one file per fold, and optionally one ONNX file per fold. The manifest says everything needed to
run the network without executing anything from the package: the architecture by name and arguments, the
input channels, the preprocessing (``kind``: ``"medpipe"`` = medpipe's own MONAI transform chain described by the
stored pipeline config; ``"nnunet"`` = nnU-Net v2's preprocessing, whose parameters live in ``params``), the
sliding window, the output activation, the label table, postprocessing, provenance and the sha256 of every file.
:func:`validate_manifest` checks a parsed document against ``manifest.schema.json`` (shipped as package data).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Literal

from medpipe.errors import CheckpointError

MANIFEST_FORMAT = "medpipe-package/1"
MANIFEST_NAME = "medpipe.json"
#: Architectures a manifest may name: MONAI network classes, built from their keyword arguments only.
ARCHITECTURES = ("UNet", "DynUNet", "SegResNet", "SwinUNETR")
#: Architectures of ``preprocessing.kind: nnunet`` packages: dynamic-network-architectures classes.
NNUNET_ARCHITECTURES = ("PlainConvUNet", "ResidualEncoderUNet")
PREPROCESSING_KINDS = ("medpipe", "nnunet")
#: Display colours (RGB) given to labels that have none of their own.
PALETTE = ((0, 0, 0), (221, 84, 56), (76, 114, 176), (85, 168, 104), (196, 78, 82), (129, 114, 178),
           (204, 185, 116), (100, 181, 205), (140, 140, 140), (255, 196, 0))


@dataclass(frozen=True)
class Architecture:
    """The network: a MONAI class from :data:`ARCHITECTURES` (or, for nnU-Net packages, one of
    :data:`NNUNET_ARCHITECTURES`) and its keyword arguments (JSON values only).
    ``slice_wise``: a 2D network applied to every slice of a (B, C, H, W, D) volume."""

    name: str
    args: dict[str, Any]
    slice_wise: bool = False

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Architecture:
        return cls(str(d["name"]), dict(d["args"]), bool(d.get("slice_wise", False)))


@dataclass(frozen=True)
class Channel:
    """One input channel, in network order (``index``)."""

    index: int
    name: str
    modality: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Channel:
        return cls(int(d["index"]), str(d["name"]), str(d["modality"]))


@dataclass(frozen=True)
class Normalisation:
    """Intensity normalisation of one channel: ``kind`` ct_window (clip to ``params.window``, scale to [0, 1]),
    zscore_nonzero (z-score over non-zero voxels), or an nnU-Net scheme (``params`` holds its statistics)."""

    channel: int
    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Normalisation:
        return cls(int(d["channel"]), str(d["kind"]), dict(d.get("params", {})))


@dataclass(frozen=True)
class Preprocessing:
    """How a case reaches network space. ``kind`` medpipe: ``config`` is the full resolved PipelineConfig (as a
    dict) whose transforms medpipe rebuilds; ``kind`` nnunet: ``params`` holds the plans' values and
    ``orientation`` is None (nnU-Net keeps the file's voxel order and transposes it)."""

    kind: str
    orientation: str | None
    target_spacing_mm: tuple[float, ...]
    normalisation: tuple[Normalisation, ...]
    crop_foreground: bool
    config: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SlidingWindow:
    """Patch (voxels, network axes), overlap fraction, blend (gaussian | constant), windows per forward pass."""

    patch_size_vox: tuple[int, ...]
    overlap: float
    blend: str
    sw_batch_size: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SlidingWindow:
        return cls(tuple(int(v) for v in d["patch_size_vox"]), float(d["overlap"]), str(d["blend"]),
                   int(d["sw_batch_size"]))


@dataclass(frozen=True)
class Output:
    """``softmax``: one channel per label value; ``sigmoid``: one channel per region (in ``regions`` order).
    ``tta_axes``: network axes along which mirroring test-time augmentation is allowed."""

    activation: Literal["softmax", "sigmoid"]
    tta_axes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Label:
    """One label value: name, display colour (RGB) and optional SNOMED-CT category / type codes
    (``{"scheme": "SCT", "value": "...", "meaning": "..."}``)."""

    value: int
    name: str
    color: tuple[int, int, int]
    category: dict[str, str] | None = None
    type: dict[str, str] | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Label:
        r, g, b = (int(c) for c in d["color"])
        return cls(int(d["value"]), str(d["name"]), (r, g, b), d.get("category"), d.get("type"))


@dataclass(frozen=True)
class Region:
    """A sigmoid output channel: the label values it covers (nnU-Net region order, largest first)."""

    name: str
    labels: tuple[int, ...]


@dataclass(frozen=True)
class Fold:
    """One trained fold: its weights (safetensors), optional ONNX file, and its validation metrics."""

    fold: int
    weights: str
    onnx: str | None = None
    metrics: Mapping[str, float | None] = field(default_factory=dict)  # None: undefined (JSON null)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Fold:
        onnx = d.get("onnx")
        return cls(int(d["fold"]), str(d["weights"]), str(onnx) if onnx is not None else None,
                   {str(k): None if v is None else float(v) for k, v in d.get("metrics", {}).items()})


@dataclass(frozen=True)
class FileEntry:
    """A file of the package (path relative to its root, POSIX separators) and its sha256."""

    path: str
    sha256: str
    size: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FileEntry:
        return cls(str(d["path"]), str(d["sha256"]), int(d["size"]))


@dataclass(frozen=True)
class Manifest:
    """The whole ``medpipe.json``."""

    name: str
    architecture: Architecture
    channels: tuple[Channel, ...]
    preprocessing: Preprocessing
    sliding_window: SlidingWindow
    output: Output
    labels: tuple[Label, ...]
    folds: tuple[Fold, ...]
    files: tuple[FileEntry, ...]
    regions: tuple[Region, ...] = ()
    postprocessing: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    licence: str = "unspecified"
    source: dict[str, Any] = field(default_factory=dict)
    software: dict[str, str] = field(default_factory=dict)
    format: str = MANIFEST_FORMAT

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-serialisable dict (tuples become lists)."""
        return _plain(asdict(self))

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str = MANIFEST_NAME) -> Manifest:
        """Validate ``raw`` against the schema, then build the records (refusals name ``where``)."""
        validate_manifest(raw, where)
        pre = raw["preprocessing"]
        return cls(
            name=raw["name"], format=raw["format"],
            architecture=Architecture.from_json(raw["architecture"]),
            channels=tuple(Channel.from_json(c) for c in raw["channels"]),
            preprocessing=Preprocessing(
                kind=pre["kind"], orientation=pre["orientation"],
                target_spacing_mm=tuple(pre["target_spacing_mm"]),
                normalisation=tuple(Normalisation.from_json(n) for n in pre["normalisation"]),
                crop_foreground=pre["crop_foreground"], config=pre.get("config", {}), params=pre.get("params", {}),
            ),
            sliding_window=SlidingWindow.from_json(raw["sliding_window"]),
            output=Output(activation=raw["output"]["activation"], tta_axes=tuple(raw["output"].get("tta_axes", ()))),
            labels=tuple(Label.from_json(lab) for lab in raw["labels"]),
            regions=tuple(Region(r["name"], tuple(r["labels"])) for r in raw.get("regions", ())),
            folds=tuple(Fold.from_json(f) for f in raw["folds"]),
            files=tuple(FileEntry.from_json(f) for f in raw["files"]),
            postprocessing=raw.get("postprocessing", {}), training=raw.get("training", {}),
            licence=raw.get("licence", "unspecified"), source=raw.get("source", {}),
            software=raw.get("software", {}),
        )

    def file_entry(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise CheckpointError(f"the manifest lists no sha256 for '{path}'", path=MANIFEST_NAME)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def manifest_schema() -> dict[str, Any]:
    """The JSON schema of ``medpipe.json`` (``medpipe/models/manifest.schema.json``)."""
    text = resources.files("medpipe.models").joinpath("manifest.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_manifest(raw: Any, where: str = MANIFEST_NAME) -> None:
    """Refuse a manifest of another format version or one that violates the schema (the message names the key)."""
    import jsonschema

    if not isinstance(raw, dict):
        raise CheckpointError("manifest is not a JSON object", path=where)
    if raw.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"unknown manifest format {raw.get('format')!r} (this medpipe reads {MANIFEST_FORMAT})",
                              path=where, hint="use the medpipe version that wrote the package")
    validator = jsonschema.Draft202012Validator(manifest_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        key = ".".join(str(p) for p in first.absolute_path) or "(top level)"
        raise CheckpointError(f"manifest violates the schema at '{key}': {first.message[:200]}", path=where)
    values = [lab["value"] for lab in raw["labels"]]
    if len(set(values)) != len(values) or 0 not in values:
        raise CheckpointError(f"label values must be unique and include 0, found {values}", path=where)
    if raw["output"]["activation"] == "sigmoid" and not raw.get("regions"):
        raise CheckpointError("sigmoid output needs 'regions'", path=where)


def default_color(value: int) -> tuple[int, int, int]:
    """A display colour for label ``value`` (black for background)."""
    return PALETTE[value % len(PALETTE)] if value else PALETTE[0]
