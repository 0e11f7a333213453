"""The frozen, JSON-serialisable description of an imported nnU-Net v2 model.

This is the future package manifest's ``preprocessing: {kind: "nnunet", ...}`` section: everything medpipe needs
to run the model exactly as nnU-Net would, read from ``plans.json``, ``dataset.json``, the checkpoints' plain
fields and ``postprocessing.json``. It holds no code references: network classes and layer types are names
checked against allow-lists when the network is built.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from medpipe.errors import CheckpointError

NNUNET_RECORD_FORMAT = "medpipe-nnunet/1"


@dataclass(frozen=True)
class NnunetRecord:
    """Preprocessing, network and label semantics of one nnU-Net v2 configuration (all axes in nnU-Net order)."""

    dataset_name: str
    plans_name: str
    trainer_name: str
    configuration: str
    folds: tuple[str, ...]
    image_reader: str
    file_ending: str
    channel_names: tuple[str, ...]
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    target_spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    normalization_schemes: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    intensity_properties: tuple[dict[str, float] | None, ...]
    #: (order, order_z, force_separate_z) for the image and for the exported logits.
    resampling_data: tuple[int, int, bool | None]
    resampling_probabilities: tuple[int, int, bool | None]
    network_class: str
    network_kwargs: dict[str, Any]
    kw_requires_import: tuple[str, ...]
    num_input_channels: int
    #: dataset.json "labels": name -> value, or name -> list of values (a region).
    labels: dict[str, Any]
    regions_class_order: tuple[int, ...] | None
    mirror_axes: tuple[int, ...] | None
    tile_step_size: float = 0.5
    #: [{"fn": name, "kwargs": {...}}] from postprocessing.json; empty when none was recorded.
    postprocessing: tuple[dict[str, Any], ...] = ()
    format: str = field(default=NNUNET_RECORD_FORMAT)

    @property
    def has_regions(self) -> bool:
        return any(isinstance(v, (list, tuple)) and len(v) > 1 for v in self.labels.values())

    @property
    def all_labels(self) -> tuple[int, ...]:
        values: set[int] = set()
        for name, value in self.labels.items():
            if name == "ignore":
                continue
            values.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
        return tuple(sorted(values))

    @property
    def regions(self) -> tuple[tuple[int, ...], ...]:
        """Foreground regions in dataset.json order (region-based models only)."""
        out = []
        for name, value in self.labels.items():
            vals = tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
            if name == "ignore" or set(vals) == {0}:
                continue
            out.append(vals)
        return tuple(out)

    @property
    def num_outputs(self) -> int:
        """Network output channels: one per foreground region (sigmoid), or one per label (softmax)."""
        return len(self.regions) if self.has_regions else len(self.all_labels)

    @property
    def max_label(self) -> int:
        if self.has_regions and self.regions_class_order is not None:
            return max(self.regions_class_order)
        return max(self.all_labels)

    @property
    def label_names(self) -> dict[int, str]:
        """Label value -> name for the written mask (region-based: the region's class in regions_class_order)."""
        if not self.has_regions:
            return {int(v): k for k, v in self.labels.items() if k != "ignore" and not isinstance(v, (list, tuple))}
        names = [k for k, v in self.labels.items() if k != "ignore" and not _is_background(v)]
        order = self.regions_class_order or ()
        return {0: "background", **{int(c): n for c, n in zip(order, names, strict=False)}}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {"kind": "nnunet", **{k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NnunetRecord:
        if not isinstance(data, dict) or data.get("format") != NNUNET_RECORD_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise CheckpointError(f"not an imported nnU-Net model record (format {found!r}, "
                                  f"expected {NNUNET_RECORD_FORMAT!r})")
        d = data
        try:
            rc, mirror = d.get("regions_class_order"), d.get("mirror_axes")
            return cls(
                dataset_name=str(d["dataset_name"]), plans_name=str(d["plans_name"]),
                trainer_name=str(d["trainer_name"]), configuration=str(d["configuration"]),
                folds=tuple(str(f) for f in d["folds"]), image_reader=str(d["image_reader"]),
                file_ending=str(d["file_ending"]), channel_names=tuple(str(c) for c in d["channel_names"]),
                transpose_forward=tuple(int(a) for a in d["transpose_forward"]),
                transpose_backward=tuple(int(a) for a in d["transpose_backward"]),
                target_spacing=tuple(float(v) for v in d["target_spacing"]),
                patch_size=tuple(int(v) for v in d["patch_size"]),
                normalization_schemes=tuple(str(n) for n in d["normalization_schemes"]),
                use_mask_for_norm=tuple(bool(m) for m in d["use_mask_for_norm"]),
                intensity_properties=tuple(None if p is None else {str(k): float(v) for k, v in p.items()}
                                           for p in d["intensity_properties"]),
                resampling_data=_resampling(d["resampling_data"]),
                resampling_probabilities=_resampling(d["resampling_probabilities"]),
                network_class=str(d["network_class"]), network_kwargs=dict(d["network_kwargs"]),
                kw_requires_import=tuple(str(k) for k in d["kw_requires_import"]),
                num_input_channels=int(d["num_input_channels"]), labels=dict(d["labels"]),
                regions_class_order=None if rc is None else tuple(int(v) for v in rc),
                mirror_axes=None if mirror is None else tuple(int(a) for a in mirror),
                tile_step_size=float(d.get("tile_step_size", 0.5)),
                postprocessing=tuple(dict(p) for p in d.get("postprocessing", ())),
                format=str(d["format"]))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"imported nnU-Net model record is malformed ({type(err).__name__}: {err})") from err

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)


def _is_background(value: Any) -> bool:
    vals = value if isinstance(value, (list, tuple)) else [value]
    return {int(v) for v in vals} == {0}


def _resampling(value: Any) -> tuple[int, int, bool | None]:
    """(order, order_z, force_separate_z) as JSON wrote it (a list)."""
    order, order_z, separate = value
    return int(order), int(order_z), None if separate is None else bool(separate)
