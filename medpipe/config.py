"""One typed, frozen pipeline configuration; ``pipelines/*.yaml`` map onto it field for field.

Precedence: CLI flag > YAML > the defaults below. Unknown keys, wrong types and unknown names are errors
that name the file and the key. Relative paths in the YAML are resolved against the YAML file's folder.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from medpipe.errors import ConfigError
from medpipe.labels import label_table, nested_order, regions_as_list
from medpipe.runtime import short_hash

Triple = tuple[float, float, float]
IntTriple = tuple[int, int, int]


@dataclass(frozen=True)
class ClassFromLabel:
    """``data.class_from_label``: ``{label: 2, min_voxels: 10}``; ``label: 0`` means unset."""

    label: int = 0
    min_voxels: int = 1


@dataclass(frozen=True)
class DataConfig:
    """Where the cases are and how they are split."""

    root: str = ""
    format: Literal["auto", "kits", "brats2023", "brats2021", "msd", "nnunet", "list"] = "auto"
    val_fraction: float = 0.2
    seed: int = 0
    #: Cross-validation: ``fold`` in [0, n_folds) trains on the other folds and validates on this one;
    #: -1 uses one seeded hold-out split of ``val_fraction`` instead.
    fold: int = -1
    n_folds: int = 5
    #: Optional JSON file of the folds (nnU-Net's splits_final.json idea): read if it exists, else written.
    splits_file: str = ""
    #: Dataset identity recorded by ``medpipe plan``; training refuses a dataset that has changed since.
    fingerprint: str = ""
    #: ``task: classification``: a CSV of ``case,label`` (label = a class name or index), relative to the config
    #: file; or, instead, ``class_from_label`` (docs/classification.md).
    class_csv: str = ""
    #: ``task: classification``: the class of a case derived from its segmentation: class 1 ("present") when
    #: label ``label`` covers at least ``min_voxels`` voxels, else class 0.
    class_from_label: ClassFromLabel = field(default_factory=ClassFromLabel)


@dataclass(frozen=True)
class TransformConfig:
    """Preprocessing (shared by training and inference) and training-time sampling/augmentation."""

    orientation: str = "RAS"
    spacing_mm: Triple = (1.0, 1.0, 1.0)
    intensity: Literal["ct_window", "zscore_nonzero"] = "ct_window"
    hu_window: tuple[float, float] = (-200.0, 300.0)
    crop_foreground: bool = True
    patch_size_vox: IntTriple = (64, 64, 32)
    samples_per_case: int = 4
    pos_fraction: float = 0.67
    augment: bool = True
    flip_prob: float = 0.5
    rotate_prob: float = 0.2
    scale_prob: float = 0.2
    intensity_prob: float = 0.3
    #: Axes of the network's (``orientation``-ordered) array along which the anatomy is mirror-symmetric: training
    #: flips only along these, and mirror TTA (``inference.tta``) may only flip along these. ``[]`` where the
    #: anatomy is not mirror-symmetric in the network's frame.
    mirror_axes: tuple[int, ...] = (0, 1, 2)


@dataclass(frozen=True)
class ModelConfig:
    """Network architecture (built by :func:`medpipe.models.factory.build_model`)."""

    arch: Literal["unet3d", "unet2d", "dynunet", "densenet121", "resnet18", "resnet50"] = "unet3d"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    norm: Literal["instance", "batch"] = "instance"
    dropout: float = 0.0
    deep_supervision: bool = False
    #: Classification networks: width multiplier (ResNet ``widen_factor``; DenseNet init features 64 x w and growth
    #: rate 32 x w). Below 1 gives a network small enough for a CPU.
    width_factor: float = 1.0


#: Network architectures of each task.
SEGMENTATION_ARCHS = ("unet3d", "unet2d", "dynunet")
CLASSIFICATION_ARCHS = ("densenet121", "resnet18", "resnet50")


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation, validation and checkpointing."""

    epochs: int = 50
    iterations_per_epoch: int = 0
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-5
    optimizer: Literal["adamw", "sgd"] = "adamw"
    scheduler: Literal["cosine", "poly", "none"] = "cosine"
    val_every: int = 5
    amp: bool = True
    #: Loader worker processes: ``auto`` uses the free cores (one stays with training), at most 8; a number
    #: above the free cores is capped with a notice.
    num_workers: int | Literal["auto"] = "auto"
    cache: bool = True
    seed: int = 0
    deterministic: bool = False
    #: Mixed precision on CUDA: bf16 where supported (auto), or forced.
    amp_dtype: Literal["auto", "bf16", "fp16"] = "auto"
    #: A folder for MONAI's PersistentDataset (preprocessed cases on disk, shared by ranks and restarts);
    #: empty: ``cache`` decides between an in-memory CacheDataset and no cache.
    cache_dir: str = ""
    #: ``auto``: Dice + cross-entropy for segmentation, cross-entropy for classification; ``ce`` or ``focal``
    #: (MONAI FocalLoss, gamma 2) are for ``task: classification``.
    loss: Literal["auto", "ce", "focal"] = "auto"
    #: ``task: classification``: draw training cases with weights 1 / (cases of their class), so that batches are
    #: class-balanced in expectation (``auto``: on for classification).
    balanced_sampling: Literal["auto"] | bool = "auto"


@dataclass(frozen=True)
class QCConfig:
    """Per-case quality-control flags (docs/inference.md): a case with any flag gets ``review: true``."""

    #: Labels that must not come out empty: "all" foreground labels, "none", or a list of label values.
    expected_labels: Literal["all", "none"] | tuple[int, ...] = "all"
    #: The training volume range per label is widened by this factor both ways: [min / (1 + m), max * (1 + m)].
    volume_margin: float = 0.25
    #: More connected components (26-connectivity) than this for one label raises a flag.
    max_components: int = 5
    #: A predicted structure whose highest mean probability is below this raises a flag.
    min_max_probability: float = 0.7
    #: Mean normalised entropy (0..1) over a structure above this raises a flag.
    max_mean_uncertainty: float = 0.4
    #: Flag labels touching the field-of-view border (the first/last voxel of any axis).
    flag_border: bool = True


@dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window inference."""

    roi_size_vox: IntTriple = (64, 64, 32)
    overlap: float = 0.5
    sw_batch_size: int = 4
    blend: Literal["gaussian", "constant"] = "gaussian"
    amp: bool = True
    keep_largest: tuple[int, ...] = ()
    #: Mirror test-time augmentation: none; one flip per allowed axis (``transforms.mirror_axes``); all
    #: combinations of the allowed axes (8 in 3D).
    tta: Literal["none", "flip", "all"] = "none"
    qc: QCConfig = field(default_factory=QCConfig)
    #: Lesion table (``<case>.lesions.csv``): connected components below this volume (mL) are not listed.
    min_lesion_ml: float = 0.0
    #: Scans with more voxels than this (per channel) are read, preprocessed and run through the network in slabs
    #: along their slice axis, each holding about this many voxels at most (source or network grid), with an
    #: overlap margin (docs/inference.md, "Long scans"). 0: never split. Default 128 Mi (a 512 x 512 x 512 block;
    #: preprocessing a slab holds about 8 bytes per source voxel of it, ~1 GiB).
    max_slab_voxels: int = 128 * 1024 * 1024


@dataclass(frozen=True)
class LabelSpec:
    """Codes and colour of one label for DICOM outputs (see :mod:`medpipe.labels`); empty fields take defaults.

    In the YAML it is written inside ``labels``: ``{1: {name: kidney, category: ..., type: ..., color: [r, g, b]}}``.
    """

    category: str = ""
    type: str = ""
    color: tuple[int, ...] = ()


@dataclass(frozen=True)
class PipelineConfig:
    """The whole pipeline. ``labels`` maps integer values to names; 0 is background. ``label_info``: the codes and
    colours given in the rich ``labels`` form (label value -> :class:`LabelSpec`)."""

    name: str = "pipeline"
    #: ``segmentation`` (a label map per voxel) or ``classification`` (one class per case, ``classes``).
    task: Literal["segmentation", "classification"] = "segmentation"
    #: ``task: classification``: the class names in class-index order (index 0 first).
    classes: tuple[str, ...] = ()
    modality: Literal["CT", "MR"] = "CT"
    channels: tuple[str, ...] = ("CT",)
    labels: dict[int, str] = field(default_factory=lambda: {0: "background", 1: "foreground"})
    #: Region-based training (nnU-Net style): name -> label values, in decoding order (from the largest to the
    #: innermost region). Non-empty: one sigmoid output per region (overlapping masks, Dice+BCE). In YAML a list
    #: ``[{name: WT, labels: [1, 2, 3]}, ...]``, or a mapping with ``region_order``, or a mapping of nested
    #: regions (see :func:`_ordered_regions`).
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    transforms: TransformConfig = field(default_factory=TransformConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    label_info: dict[int, LabelSpec] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Label channels after decoding: max label + 1 (channel index = label value)."""
        return max(self.labels) + 1

    @property
    def is_classification(self) -> bool:
        return self.task == "classification"

    @property
    def out_channels(self) -> int:
        """Output channels of the network: one per class (classification), one per region (sigmoid) or
        ``num_classes`` (softmax)."""
        if self.is_classification:
            return len(self.classes)
        return len(self.regions) if self.regions else self.num_classes

    @property
    def balanced(self) -> bool:
        """Class-balanced case sampling (``training.balanced_sampling``, ``auto`` = on for classification)."""
        b = self.training.balanced_sampling
        return self.is_classification if b == "auto" else bool(b)

    def region_order(self) -> list[tuple[str, tuple[int, ...], int]]:
        """(name, label values, label value it decodes to) per region, in order: a voxel takes the label of the
        last region whose probability exceeds 0.5 (nnU-Net's ``regions_class_order``). The decoded label of a
        region is the one value it holds that no later region holds."""
        out = []
        names = list(self.regions)
        for i, name in enumerate(names):
            later = {v for n in names[i + 1:] for v in self.regions[n]}
            own = sorted(set(self.regions[name]) - later)
            if len(own) != 1:
                raise ConfigError(
                    f"key 'regions.{name}': cannot decode to one label: values {sorted(self.regions[name])} minus "
                    f"those of later regions leave {own}",
                    hint="list regions from the largest to the innermost, each adding exactly one label",
                )
            out.append((name, tuple(self.regions[name]), own[0]))
        return out

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-serialisable dict (tuples become lists; regions in their explicit list form); an empty
        ``label_info`` is left out, so configs without codes keep their digest."""
        out = _plain(dataclasses.asdict(self))
        out["regions"] = regions_as_list(self.regions)
        if not self.label_info:
            del out["label_info"]
        for path, default in _LATER_DEFAULTS:  # keys added later (classification, slabs): out at their defaults, so
            *parents, key = path               # that every config written before keeps its digest
            section = out
            for p in parents:
                section = section[p]
            if section.get(key) == default:
                del section[key]
        return out

    def digest(self) -> str:
        """sha256 of the canonical JSON form: the config hash recorded beside outputs."""
        return short_hash(self.to_dict())

    def with_overrides(self, **sections: dict[str, Any]) -> PipelineConfig:
        """A copy with fields of sections replaced, e.g. ``with_overrides(training={"epochs": 3})``."""
        updates: dict[str, Any] = {}
        for section, values in sections.items():
            current = getattr(self, section)
            updates[section] = dataclasses.replace(current, **values) if values else current
        return dataclasses.replace(self, **updates)


#: Keys added after configs (and their digests) were in use, with their defaults.
_LATER_DEFAULTS: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("task",), "segmentation"), (("classes",), []), (("data", "class_csv"), ""),
    (("data", "class_from_label"), {"label": 0, "min_voxels": 1}), (("model", "width_factor"), 1.0),
    (("training", "loss"), "auto"), (("training", "balanced_sampling"), "auto"),
    (("inference", "max_slab_voxels"), 128 * 1024 * 1024),  # the long-scan split (masks equal the whole scan's)
)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples; raise ConfigError."""
    origin = get_origin(tp)

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"key '{where}': expected {expected}, found {value!r}", path=source)

    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail("a mapping")
        return _build(tp, value, where, source)
    if origin is Literal:
        if value not in get_args(tp):
            raise fail("one of " + ", ".join(repr(a) for a in get_args(tp)))
        return value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, where, source)
            except ConfigError:
                continue
        raise fail(" or ".join(_type_name(a) for a in get_args(tp)))
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list | tuple):
            raise fail("a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise fail(f"a list of {len(args)} values")
        return tuple(_coerce(v, a, f"{where}[{i}]", source) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        kt, vt = get_args(tp)
        if not isinstance(value, dict):
            raise fail("a mapping")
        return {
            _coerce(k, kt, f"{where}.{k}", source): _coerce(v, vt, f"{where}.{k}", source) for k, v in value.items()
        }
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail("a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise ConfigError(f"key '{where}': unsupported type {tp}", path=source)


def _build(cls: Any, raw: dict[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(
                f"unknown key '{where}'", path=source, hint="valid keys here: " + ", ".join(sorted(names))
            )
        kwargs[key] = _coerce(value, hints[key], where, source)
    return cls(**kwargs)


def _validate(cfg: PipelineConfig, source: str) -> None:
    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"key '{key}': {msg}", path=source)

    if 0 not in cfg.labels or any(k < 0 for k in cfg.labels):
        raise bad("labels", f"must contain 0 (background) and only non-negative values, found {sorted(cfg.labels)}")
    if not cfg.channels:
        raise bad("channels", "at least one input channel is needed")
    if any(s <= 0 for s in cfg.transforms.spacing_mm):
        raise bad("transforms.spacing_mm", f"spacing must be positive, found {cfg.transforms.spacing_mm}")
    if cfg.transforms.hu_window[0] >= cfg.transforms.hu_window[1]:
        raise bad("transforms.hu_window", f"lower bound must be below upper, found {cfg.transforms.hu_window}")
    if any(s < 1 for s in cfg.transforms.patch_size_vox + cfg.inference.roi_size_vox):
        raise bad("transforms.patch_size_vox", "patch sizes must be positive")
    if not 0.0 <= cfg.inference.overlap < 1.0:
        raise bad("inference.overlap", f"must be in [0, 1), found {cfg.inference.overlap}")
    if cfg.inference.min_lesion_ml < 0:
        raise bad("inference.min_lesion_ml", f"must be at least 0, found {cfg.inference.min_lesion_ml}")
    if cfg.inference.max_slab_voxels < 0:
        raise bad("inference.max_slab_voxels", f"must be at least 0 (0: never split), found "
                  f"{cfg.inference.max_slab_voxels}")
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise bad("data.val_fraction", f"must be in (0, 1), found {cfg.data.val_fraction}")
    for name, values in cfg.regions.items():
        unknown = sorted(set(values) - (set(cfg.labels) - {0}))
        if not values or unknown:
            raise bad(f"regions.{name}", f"values must be foreground labels of 'labels', found {list(values)}")
    unknown_info = sorted(set(cfg.label_info) - (set(cfg.labels) - {0}))
    if unknown_info:
        raise bad("labels", f"codes given for {unknown_info}, which are not foreground labels")

    try:
        label_table(cfg.labels, cfg.label_info)
    except ValueError as err:
        raise bad("labels", str(err)) from err
    if cfg.regions:
        try:
            cfg.region_order()
        except ConfigError as err:
            raise ConfigError(err.message, path=source, hint=err.hint) from err
    if cfg.data.n_folds < 2:
        raise bad("data.n_folds", f"must be at least 2, found {cfg.data.n_folds}")
    if not -1 <= cfg.data.fold < cfg.data.n_folds:
        raise bad("data.fold", f"fold {cfg.data.fold} does not exist with {cfg.data.n_folds} folds "
                               f"(0-{cfg.data.n_folds - 1}, or -1 for a hold-out split)")
    axes = cfg.transforms.mirror_axes
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise bad("transforms.mirror_axes", f"must be distinct axes among 0, 1, 2, found {list(axes)}")
    qc = cfg.inference.qc
    if isinstance(qc.expected_labels, tuple) and set(qc.expected_labels) - set(cfg.labels):
        raise bad("inference.qc.expected_labels", f"unknown labels {sorted(set(qc.expected_labels) - set(cfg.labels))}")
    if qc.volume_margin < 0 or qc.max_components < 1 or not 0 <= qc.min_max_probability <= 1:
        raise bad("inference.qc", "volume_margin >= 0, max_components >= 1, min_max_probability in [0, 1]")
    _validate_task(cfg, bad)
    if len(cfg.model.strides) != len(cfg.model.channels) - 1:
        raise bad("model.strides", f"needs len(channels) - 1 = {len(cfg.model.channels) - 1} entries")
    if cfg.training.num_workers != "auto" and int(cfg.training.num_workers) < 0:
        raise bad("training.num_workers", f"must be 'auto' or at least 0, found {cfg.training.num_workers}")
    for name in ("epochs", "batch_size", "val_every", "samples_per_case", "sw_batch_size"):
        section = "training" if hasattr(cfg.training, name) else (
            "transforms" if hasattr(cfg.transforms, name) else "inference")
        if getattr(getattr(cfg, section), name) < 1:
            raise bad(f"{section}.{name}", "must be at least 1")


def _validate_task(cfg: PipelineConfig, bad: Any) -> None:
    """The keys of each task: classification networks, classes and case labels only with ``task: classification``,
    segmentation networks, regions and deep supervision only with segmentation."""
    d, t, m = cfg.data, cfg.training, cfg.model
    if m.width_factor <= 0:
        raise bad("model.width_factor", f"must be positive, found {m.width_factor}")
    if not cfg.is_classification:
        if m.arch in CLASSIFICATION_ARCHS:
            raise bad("model.arch", f"{m.arch} is a classification network; with task segmentation use one of "
                                    f"{', '.join(SEGMENTATION_ARCHS)} (or set task: classification)")
        for key, value, unset in (("classes", cfg.classes, ()), ("data.class_csv", d.class_csv, ""),
                                  ("data.class_from_label", d.class_from_label, ClassFromLabel()),
                                  ("training.balanced_sampling", t.balanced_sampling, "auto")):
            if value != unset and not (key == "training.balanced_sampling" and value is False):
                raise bad(key, "is for task classification (this config's task is segmentation)")
        if t.loss != "auto":
            raise bad("training.loss", f"{t.loss} is for task classification; segmentation uses Dice + "
                                       "cross-entropy (loss: auto)")
        return
    if m.arch not in CLASSIFICATION_ARCHS:
        raise bad("model.arch", f"{m.arch} is a segmentation network; task classification needs one of "
                                f"{', '.join(CLASSIFICATION_ARCHS)}")
    if len(cfg.classes) < 2 or len(set(cfg.classes)) != len(cfg.classes) or not all(cfg.classes):
        raise bad("classes", f"task classification needs at least two distinct class names, found "
                             f"{list(cfg.classes)}")
    if cfg.regions:
        raise bad("regions", "regions are for segmentation; task classification predicts one class per case")
    if m.deep_supervision:
        raise bad("model.deep_supervision", "is for segmentation networks (dynunet)")
    if m.arch == "densenet121" and min(cfg.transforms.patch_size_vox) < 32:
        raise bad("transforms.patch_size_vox", f"densenet121 halves the volume five times: every side must be at "
                                               f"least 32 voxels, found {list(cfg.transforms.patch_size_vox)}")
    derived = d.class_from_label != ClassFromLabel()
    if bool(d.class_csv) == derived:
        raise bad("data.class_csv", "task classification needs the case labels from exactly one of data.class_csv "
                                    "(a CSV of case,label) or data.class_from_label ({label: L, min_voxels: N})")
    if derived:
        rule = d.class_from_label
        if rule.label not in set(cfg.labels) - {0}:
            raise bad("data.class_from_label.label", f"must be a foreground label of 'labels' "
                                                     f"({sorted(set(cfg.labels) - {0})}), found {rule.label}")
        if rule.min_voxels < 1:
            raise bad("data.class_from_label.min_voxels", f"must be at least 1, found {rule.min_voxels}")
        if len(cfg.classes) != 2:
            raise bad("classes", f"data.class_from_label gives two classes (absent, present), found {len(cfg.classes)}"
                                 f" names {list(cfg.classes)}")


def config_from_dict(raw: dict[str, Any], source: str = "<config>", base_dir: Path | None = None) -> PipelineConfig:
    """Build and validate a config from a parsed YAML mapping; relative ``data.root`` is resolved."""
    if not isinstance(raw, dict):
        raise ConfigError("expected a mapping at the top level of the config", path=source)
    raw = _split_rich_labels(raw, source)
    raw = _ordered_regions(raw, source)
    cfg: PipelineConfig = _build(PipelineConfig, raw, "", source)
    _validate(cfg, source)
    if base_dir is not None:
        data = cfg.data
        if data.root and not Path(data.root).is_absolute():
            data = dataclasses.replace(data, root=str((base_dir / data.root).resolve()))
        if data.class_csv and not Path(data.class_csv).is_absolute():
            data = dataclasses.replace(data, class_csv=str((base_dir / data.class_csv).resolve()))
        if data.splits_file and not Path(data.splits_file).is_absolute():
            data = dataclasses.replace(data, splits_file=str((base_dir / data.splits_file).resolve()))
        cfg = dataclasses.replace(cfg, data=data)
        if cfg.training.cache_dir and not Path(cfg.training.cache_dir).is_absolute():
            cache = str((base_dir / cfg.training.cache_dir).resolve())
            cfg = cfg.with_overrides(training={"cache_dir": cache})
    return cfg


def _split_rich_labels(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """``labels: {1: {name: kidney, category: ..., type: ..., color: [...]}}`` -> names in ``labels``, the rest in
    ``label_info`` (the plain ``{1: kidney}`` form passes unchanged)."""
    labels = raw.get("labels")
    if not isinstance(labels, dict) or not any(isinstance(v, dict) for v in labels.values()):
        return raw
    names: dict[Any, Any] = {}
    info = dict(raw.get("label_info") or {})
    for key, value in labels.items():
        if not isinstance(value, dict):
            names[key] = value
            continue
        if "name" not in value:
            raise ConfigError(f"key 'labels.{key}': a label given as a mapping needs a 'name'", path=source)
        names[key] = value["name"]
        spec = {k: v for k, v in value.items() if k != "name"}
        unknown = sorted(set(spec) - {f.name for f in dataclasses.fields(LabelSpec)})
        if unknown:
            raise ConfigError(f"unknown key 'labels.{key}.{unknown[0]}'", path=source,
                              hint="a label mapping holds name, category, type and color")
        if spec:
            info[key] = spec
    return {**raw, "labels": names, "label_info": info}


def _ordered_regions(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """``regions`` as an ordered mapping, from any of its forms: a list ``[{name, labels}, ...]`` (the order is the
    list's), a mapping plus ``region_order: [names]``, or a mapping alone when the regions are nested (the order is
    then the containment order). A mapping whose order nothing fixes is refused: a YAML writer that sorts keys
    would silently change the decoding."""
    regions, order = raw.get("regions"), raw.get("region_order")
    out = {k: v for k, v in raw.items() if k != "region_order"}
    if isinstance(regions, list):
        mapping: dict[str, Any] = {}
        for i, entry in enumerate(regions):
            if not isinstance(entry, dict) or set(entry) != {"name", "labels"} or not isinstance(entry["name"], str):
                raise ConfigError(f"key 'regions[{i}]': expected {{name: ..., labels: [...]}}, found {entry!r}",
                                  path=source)
            if entry["name"] in mapping:
                raise ConfigError(f"key 'regions[{i}]': region {entry['name']!r} listed twice", path=source)
            mapping[entry["name"]] = entry["labels"]
        if order is not None and list(order) != list(mapping):
            raise ConfigError(f"key 'region_order': {order!r} contradicts the order of the 'regions' list "
                              f"{list(mapping)}", path=source, hint="drop region_order (a list keeps its order)")
        out["regions"] = mapping
    elif isinstance(regions, dict) and regions:
        if order is not None:
            if not isinstance(order, list) or sorted(map(str, order)) != sorted(regions):
                raise ConfigError(f"key 'region_order': must name each region of 'regions' once "
                                  f"({sorted(regions)}), found {order!r}", path=source)
            out["regions"] = {str(n): regions[n] for n in order}
        elif len(regions) > 1:
            nested = nested_order({k: v for k, v in regions.items() if isinstance(v, list | tuple)})
            if nested is None or len(nested) != len(regions):
                raise ConfigError(
                    f"key 'regions': the decoding order of regions {sorted(regions)} is not fixed: a mapping's "
                    "order is lost when YAML is rewritten (e.g. with sorted keys) and these regions are not nested",
                    path=source, hint="write regions as a list [{name: WT, labels: [1, 2, 3]}, ...] or add "
                                      "region_order: [names from the largest to the innermost]")
            out["regions"] = {n: regions[n] for n in nested}
    elif order is not None:
        raise ConfigError("key 'region_order': given without 'regions'", path=source)
    return out


def load_config(path: str | Path) -> PipelineConfig:
    """Read a pipeline YAML file into a validated, frozen :class:`PipelineConfig`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", path=path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"not valid YAML ({err})", path=path) from err
    return config_from_dict(raw or {}, str(path), base_dir=path.resolve().parent)


def dump_config(cfg: PipelineConfig) -> str:
    """The config as YAML text (round-trips through :func:`config_from_dict`)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
