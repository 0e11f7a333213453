"""nnU-Net v2 result folders as medpipe packages (``medpipe import nnunet``), and packages back to a record.

An nnU-Net package is an ordinary medpipe package (``medpipe.json`` checked against the shipped schema,
``weights/fold_<k>.safetensors``, the sha256 of every file) whose manifest says ``preprocessing.kind: nnunet``.
The :class:`NnunetRecord` that :mod:`medpipe.models.importers.nnunet` reads from ``plans.json``,
``dataset.json``, the checkpoints and ``postprocessing.json`` is spread over the manifest's generic fields where
one exists (channels, target spacing, per-channel normalisation with the plans' numbers, patch size, TTA axes,
labels, regions, architecture, postprocessing, provenance) and ``preprocessing.params`` holds the rest (axis
transposes, resampling orders and the separate-z threshold, tile step, Gaussian, accumulation dtype, dataset.json
labels and ``regions_class_order``). :func:`record_from_manifest` rebuilds exactly the same record, so a package
runs through the same arithmetic as ``medpipe infer-nnunet``.

nnU-Net's fold ``all`` (trained on every case) is fold ``-1`` in the manifest (``weights/fold_all.safetensors``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medpipe.errors import CheckpointError
from medpipe.models.importers.nnunet import (
    NETWORK_CLASSES,
    build_network,
    read_result_folder,
)
from medpipe.models.importers.nnunet_preprocess import ANISOTROPY_THRESHOLD
from medpipe.models.importers.nnunet_record import NNUNET_RECORD_FORMAT, NnunetRecord
from medpipe.models.manifest import (
    MANIFEST_NAME,
    NNUNET_ARCHITECTURES,
    Architecture,
    Channel,
    Fold,
    Label,
    Manifest,
    Normalisation,
    Output,
    Preprocessing,
    Region,
    SlidingWindow,
    default_color,
)
from medpipe.runtime import versions

if TYPE_CHECKING:
    from torch import nn

    from medpipe.models.package import PackageContents

SOURCE_KIND = "nnunet-result"
#: nnU-Net's Gaussian tile weights: sigma = patch size x this.
GAUSSIAN_SIGMA_SCALE = 1.0 / 8.0
_SHORT_TO_CLASS = {short: full for full, short in NETWORK_CLASSES.items()}


def fold_number(name: str) -> int:
    """nnU-Net fold name -> manifest fold: ``"3"`` -> 3, ``"all"`` -> -1."""
    if name == "all":
        return -1
    if not re.fullmatch(r"\d+", str(name)):
        raise CheckpointError(f"fold {name!r} is neither a number nor 'all'")
    return int(name)


def fold_name(number: int) -> str:
    """Manifest fold -> nnU-Net fold name (-1 -> ``"all"``)."""
    return "all" if number == -1 else str(number)


def _decoded_region_values(record: NnunetRecord) -> list[int]:
    """The label each region decodes to under medpipe's rule (its one value that no later region holds)."""
    regions = record.regions
    out = []
    for i, values in enumerate(regions):
        later = {v for r in regions[i + 1:] for v in r}
        own = sorted(set(values) - later)
        out.append(own[0] if len(own) == 1 else -1)
    return out


def manifest_from_record(record: NnunetRecord, folds: Sequence[Fold], *, licence: str = "unspecified",
                         name: str | None = None, software: dict[str, str] | None = None,
                         training: dict[str, Any] | None = None, where: str | Path = "dataset.json") -> Manifest:
    """The manifest of an imported nnU-Net configuration (``files`` is filled in when the package is written);
    ``where``: the dataset.json named when its regions cannot be decoded."""
    if record.has_regions and list(record.regions_class_order or ()) != _decoded_region_values(record):
        raise CheckpointError(f"regions_class_order {list(record.regions_class_order or ())} does not match the "
                              f"nesting of the regions {[list(r) for r in record.regions]} (each region must add "
                              "exactly the label it is painted with, largest region first)", path=where)
    names = record.label_names
    region_names = [k for k, v in record.labels.items()
                    if k != "ignore" and {int(x) for x in (v if isinstance(v, list | tuple) else [v])} != {0}]
    normalisation = tuple(
        Normalisation(c, scheme, {"use_mask_for_norm": bool(record.use_mask_for_norm[c]),
                                  "foreground_intensity_properties": record.intensity_properties[c]})
        for c, scheme in enumerate(record.normalization_schemes))
    params: dict[str, Any] = {
        "format": record.format,
        "transpose_forward": list(record.transpose_forward), "transpose_backward": list(record.transpose_backward),
        "crop_to_nonzero": True,
        "resampling": {kind: dict(zip(("order", "order_z", "force_separate_z"), values, strict=True))
                       for kind, values in (("data", record.resampling_data),
                                            ("probabilities", record.resampling_probabilities))},
        "anisotropy_threshold": ANISOTROPY_THRESHOLD, "tile_step_size": record.tile_step_size,
        "gaussian_sigma_scale": GAUSSIAN_SIGMA_SCALE, "accumulate": "float16",
        "mirror_axes": list(record.mirror_axes) if record.mirror_axes is not None else None,
        "labels": dict(record.labels),
        "regions_class_order": list(record.regions_class_order) if record.regions_class_order is not None else None,
        "layer_type_args": list(record.kw_requires_import),
        "image_reader": record.image_reader, "file_ending": record.file_ending,
    }
    return Manifest(
        name=name or f"{record.dataset_name}__{record.configuration}",
        architecture=Architecture(NETWORK_CLASSES[record.network_class], dict(record.network_kwargs)),
        channels=tuple(Channel(i, n, n) for i, n in enumerate(record.channel_names)),
        preprocessing=Preprocessing("nnunet", None, tuple(record.target_spacing), normalisation, True,
                                    params=params),
        sliding_window=SlidingWindow(tuple(record.patch_size), round(1.0 - record.tile_step_size, 6), "gaussian", 1),
        output=Output("sigmoid" if record.has_regions else "softmax", tuple(record.mirror_axes or ())),
        labels=tuple(Label(v, n, default_color(v)) for v, n in sorted(names.items())),
        regions=tuple(Region(n, tuple(r)) for n, r in zip(region_names, record.regions, strict=True))
        if record.has_regions else (),
        postprocessing={"params": {"nnunet": [dict(s) for s in record.postprocessing]}} if record.postprocessing
        else {},
        folds=tuple(folds), files=(), training=training or {}, licence=licence, software=software or {},
        source={"kind": SOURCE_KIND, "dataset": record.dataset_name, "plans": record.plans_name,
                "trainer": record.trainer_name, "configuration": record.configuration},
    )


def record_from_manifest(manifest: Manifest, where: str | Path = MANIFEST_NAME) -> NnunetRecord:
    """The :class:`NnunetRecord` a ``kind: nnunet`` manifest describes (the manifest is already schema-checked)."""
    pre = manifest.preprocessing
    if pre.kind != "nnunet" or manifest.architecture.name not in NNUNET_ARCHITECTURES:
        raise CheckpointError(f"not an nnU-Net package (preprocessing kind {pre.kind!r}, architecture "
                              f"{manifest.architecture.name!r})", path=where)
    p, src = pre.params, manifest.source
    if abs((1.0 - manifest.sliding_window.overlap) - float(p["tile_step_size"])) > 1e-6:
        raise CheckpointError(f"sliding_window.overlap {manifest.sliding_window.overlap} disagrees with "
                              f"preprocessing.params.tile_step_size {p['tile_step_size']}", path=where)
    norms = sorted(pre.normalisation, key=lambda n: n.channel)
    channels = sorted(manifest.channels, key=lambda c: c.index)
    expected = list(range(len(channels)))
    if [n.channel for n in norms] != expected or [c.index for c in channels] != expected:
        raise CheckpointError("normalisation must name every channel once, in order", path=where)

    def res(kind: str) -> tuple[int, int, bool | None]:
        r = p["resampling"][kind]
        return int(r["order"]), int(r["order_z"]), r["force_separate_z"]

    record = NnunetRecord(
        dataset_name=str(src["dataset"]), plans_name=str(src["plans"]), trainer_name=str(src["trainer"]),
        configuration=str(src["configuration"]),
        folds=tuple(fold_name(f.fold) for f in manifest.folds),
        image_reader=str(p["image_reader"]), file_ending=str(p["file_ending"]),
        channel_names=tuple(c.name for c in channels),
        transpose_forward=tuple(int(i) for i in p["transpose_forward"]),
        transpose_backward=tuple(int(i) for i in p["transpose_backward"]),
        target_spacing=tuple(float(s) for s in pre.target_spacing_mm),
        patch_size=tuple(int(s) for s in manifest.sliding_window.patch_size_vox),
        normalization_schemes=tuple(n.kind for n in norms),
        use_mask_for_norm=tuple(bool(n.params["use_mask_for_norm"]) for n in norms),
        intensity_properties=tuple(
            {k: float(v) for k, v in n.params["foreground_intensity_properties"].items()}
            if n.params["foreground_intensity_properties"] is not None else None for n in norms),
        resampling_data=res("data"), resampling_probabilities=res("probabilities"),
        network_class=_SHORT_TO_CLASS[manifest.architecture.name],
        network_kwargs=dict(manifest.architecture.args),
        kw_requires_import=tuple(str(k) for k in p["layer_type_args"]),
        num_input_channels=len(channels), labels=dict(p["labels"]),
        regions_class_order=tuple(int(c) for c in p["regions_class_order"])
        if p["regions_class_order"] is not None else None,
        mirror_axes=tuple(int(a) for a in p["mirror_axes"]) if p["mirror_axes"] is not None else None,
        tile_step_size=float(p["tile_step_size"]),
        postprocessing=tuple(dict(s) for s in manifest.postprocessing.get("params", {}).get("nnunet", [])),
        format=str(p["format"]),
    )
    if record.format != NNUNET_RECORD_FORMAT:
        raise CheckpointError(f"unknown nnU-Net record format {record.format!r}", path=where)
    if record.num_outputs != (len(manifest.regions) if manifest.regions else len(manifest.labels)):
        raise CheckpointError(f"the manifest's labels/regions ({len(manifest.labels)}/{len(manifest.regions)}) "
                              f"disagree with preprocessing.params.labels ({record.num_outputs} outputs)", path=where)
    return record


def _fold_metrics(fold_dir: Path) -> dict[str, float]:
    """Validation Dice nnU-Net wrote after training (``fold_k/validation/summary.json``, JSON), if present."""
    path = fold_dir / "validation" / "summary.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"not valid JSON ({err})", path=path) from err
    out: dict[str, float] = {}
    mean = data.get("foreground_mean", {}).get("Dice")
    if isinstance(mean, int | float):
        out["val_dice_mean"] = round(float(mean), 5)
    for key, values in (data.get("mean") or {}).items():
        dice = values.get("Dice") if isinstance(values, dict) else None
        if isinstance(dice, int | float):
            out[f"val_dice_{re.sub(r'[^0-9A-Za-z]+', '_', str(key)).strip('_')}"] = round(float(dice), 5)
    return out


def _version(module: str) -> str:
    try:
        return version(module)
    except PackageNotFoundError:
        return "not installed"


def import_nnunet_package(folder: str | Path, dest: str | Path, folds: Sequence[str] | None = None, *,
                          licence: str | None = None, name: str | None = None) -> Manifest:
    """Read a TRAINER__PLANS__CONFIG folder safely and write it as a package ``dest`` (``.zip`` or a folder);
    returns the manifest written. Every fold's weights must load strictly into the planned network."""
    from medpipe.models.package import safetensors_bytes, write_package

    folder = Path(folder)
    record, weights = read_result_folder(folder, list(folds) if folds is not None else None)
    network = build_network(record)
    files: dict[str, bytes] = {}
    manifest_folds: list[Fold] = []
    for fold, state in weights.items():
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"fold {fold}: weights do not fit the planned network "
                                  f"({str(err).splitlines()[0][:200]})", path=folder / f"fold_{fold}",
                                  hint="custom trainers that change the architecture are not supported") from err
        path = f"weights/fold_{fold}.safetensors"
        files[path] = safetensors_bytes(network)
        manifest_folds.append(Fold(fold_number(fold), path, None, _fold_metrics(folder / f"fold_{fold}")))
    software = versions()
    software["safetensors"] = _version("safetensors")
    software["dynamic_network_architectures"] = _version("dynamic_network_architectures")
    training = {"trainer": record.trainer_name, "configuration": record.configuration,
                "folds": [f.fold for f in manifest_folds]}
    manifest = manifest_from_record(record, manifest_folds, licence=licence or "unspecified", name=name,
                                    software=software, training=training, where=folder / "dataset.json")
    if record_from_manifest(manifest, str(dest)) != record:  # what we write must describe what we read
        raise CheckpointError("internal: the manifest does not reproduce the nnU-Net record", path=folder)
    return write_package(Path(dest), manifest, files)


def load_nnunet_package(contents: PackageContents, folds: Sequence[int] | None = None,
                        device: str = "cpu") -> tuple[NnunetRecord, dict[int, nn.Module]]:
    """The record of a checked package and one network per chosen fold (weights loaded strictly from
    safetensors, eval mode, on ``device``); the record's ``folds`` are the chosen ones."""
    from medpipe.models.package import load_weights

    where = f"{contents.path}:{MANIFEST_NAME}"
    record = record_from_manifest(contents.manifest, where)
    chosen = [f for f in contents.manifest.folds if folds is None or f.fold in set(folds)]
    if not chosen:
        raise CheckpointError(f"--folds {' '.join(map(str, folds or []))}: the package has folds "
                              f"{', '.join(str(f.fold) for f in contents.manifest.folds)}", path=contents.path)
    networks: dict[int, nn.Module] = {}
    for fold in chosen:
        net = build_network(record)
        load_weights(net, contents.files[fold.weights], f"{contents.path}:{fold.weights}")
        networks[fold.fold] = net.to(device).eval()
    return dataclasses.replace(record, folds=tuple(fold_name(f.fold) for f in chosen)), networks
