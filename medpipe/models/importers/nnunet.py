"""Import an nnU-Net v2 result folder (``RESULTS/DatasetXXX/TRAINER__PLANS__CONFIG``) safely.

Read: ``plans.json``, ``dataset.json``, ``fold_*/checkpoint_final.pth`` (``torch.load(weights_only=True)`` with an
allow-list of the exact plain types nnU-Net pickles besides tensors) and, when present, ``postprocessing.json``
(never ``postprocessing.pkl``). Refused: cascade stages, unknown network classes or layer types, non-CT/MR
normalisations, missing folds, any other pickled object. The import writes ``nnunet.json`` (an
:class:`NnunetRecord` plus the sha256 of each weights file) and ``fold_<k>.safetensors`` into an output folder;
:func:`load_imported` reads them back without unpickling anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medpipe.errors import CheckpointError, ConfigError
from medpipe.io.atomic import atomic_path, write_bytes_atomic
from medpipe.models.importers.nnunet_record import NnunetRecord

if TYPE_CHECKING:
    import torch
    from torch import nn

IMPORT_MANIFEST = "nnunet.json"
SUPPORTED_READERS = ("SimpleITKIO", "NibabelIO")
SUPPORTED_NORMALISATIONS = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization")
#: Network classes the importer builds (dynamic-network-architectures); anything else is refused by name.
NETWORK_CLASSES = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet": "PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet": "ResidualEncoderUNet",
}
#: torch.nn layer types a plan may name for conv_op / norm_op / dropout_op / nonlin.
LAYER_TYPES = {
    "Conv1d", "Conv2d", "Conv3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "BatchNorm1d", "BatchNorm2d",
    "BatchNorm3d", "GroupNorm", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "LeakyReLU", "ReLU", "PReLU", "GELU",
    "ELU", "SiLU",
}
_LAYER_NAME = re.compile(r"^torch\.nn(\.modules\.[a-z_]+)?\.([A-Za-z0-9]+)$")


def _require_dna() -> Any:
    try:
        import dynamic_network_architectures.architectures.unet as unet
    except ImportError as err:
        raise ConfigError("nnU-Net models need the optional package dynamic-network-architectures",
                          hint='pip install "medpipe[nnunet]"') from err
    return unet


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError("missing file of the nnU-Net result folder", path=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"not valid JSON ({err})", path=path) from err
    if not isinstance(data, dict):
        raise CheckpointError("expected a JSON object", path=path)
    return data


def _checkpoint_allowlist() -> list[Any]:
    """The non-tensor globals nnU-Net v2 pickles into checkpoint_final.pth besides what ``weights_only`` allows
    anyway (dicts, lists, tuples, numbers, strings, torch.device): numpy float64 values in its training log."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    allowed: list[Any] = [np.dtype, core.multiarray.scalar]
    allowed += [getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType") if hasattr(np, "dtypes")]
    return allowed


def load_nnunet_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read an nnU-Net checkpoint with ``weights_only=True`` and the allow-list; refuse anything else, naming it."""
    import torch

    path = Path(path)
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "").strip() not in ("", "0"):
        raise CheckpointError("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set; medpipe refuses to load checkpoints unsafely",
                              path=path, hint="unset the variable")
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path=path)
    try:
        with torch.serialization.safe_globals(_checkpoint_allowlist()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
        what = found.group(1) if found else "an object outside the allow-list"
        raise CheckpointError(f"refused: the checkpoint pickles {what}, which is not on nnU-Net's list of plain types",
                              path=path, hint="medpipe never unpickles arbitrary objects") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"corrupt or truncated checkpoint ({str(err).splitlines()[0][:160]})", path=path) from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise CheckpointError("not an nnU-Net v2 checkpoint (no 'network_weights')", path=path)
    return ckpt


def _find_folds(folder: Path, folds: list[str] | None, checkpoint_name: str) -> list[str]:
    if folds is None:
        found = sorted(p.parent.name[len("fold_"):] for p in folder.glob(f"fold_*/{checkpoint_name}"))
        if not found:
            raise CheckpointError(f"no fold_*/{checkpoint_name} in the nnU-Net result folder", path=folder)
        return found
    missing = [str(folder / f"fold_{f}" / checkpoint_name) for f in folds
               if not (folder / f"fold_{f}" / checkpoint_name).is_file()]
    if missing:
        raise CheckpointError(f"missing fold checkpoint(s): {', '.join(missing)}", path=folder,
                              hint="pick existing folds with --folds")
    return [str(f) for f in folds]


def _postprocessing(folder: Path, folds: list[str]) -> tuple[dict[str, Any], ...]:
    """Postprocessing recorded by nnUNetv2_find_best_configuration, from JSON only."""
    candidates = [*sorted(folder.glob("crossval_results_folds_*/postprocessing.json")), folder / "postprocessing.json"]
    for path in candidates:
        if path.is_file():
            data = _read_json(path)
            fns = data.get("postprocessing_fns", [])
            kwargs = data.get("postprocessing_kwargs", [{}] * len(fns))
            steps = []
            for fn, kw in zip(fns, kwargs, strict=False):
                if fn != "remove_all_but_largest_component_from_segmentation":
                    raise CheckpointError(f"unsupported postprocessing function {fn!r}", path=path)
                steps.append({"fn": fn, "kwargs": kw})
            return tuple(steps)
    return ()


def read_result_folder(folder: str | Path, folds: list[str] | None = None,
                       checkpoint_name: str = "checkpoint_final.pth") -> tuple[NnunetRecord, dict[str, dict]]:
    """Read a TRAINER__PLANS__CONFIG folder -> (record, {fold: state dict})."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError("nnU-Net result folder not found", path=folder)
    plans = _read_json(folder / "plans.json")
    dataset = _read_json(folder / "dataset.json")
    fold_names = _find_folds(folder, folds, checkpoint_name)
    weights: dict[str, dict] = {}
    first: dict[str, Any] = {}
    for f in fold_names:
        ckpt = load_nnunet_checkpoint(folder / f"fold_{f}" / checkpoint_name)
        weights[f] = ckpt["network_weights"]
        first = first or ckpt
    config_name = str(first.get("init_args", {}).get("configuration") or folder.name.split("__")[-1])
    record = _record_from(plans, dataset, config_name, first, fold_names, folder)
    return record, weights


def _config(plans: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    configs = plans.get("configurations", {})
    if name not in configs:
        raise CheckpointError(f"configuration {name!r} not in plans.json (has {sorted(configs)})", path=path)
    cfg = dict(configs[name])
    seen = {name}
    while "inherits_from" in cfg:
        parent = cfg.pop("inherits_from")
        if parent in seen or parent not in configs:
            raise CheckpointError(f"configuration {name!r} inherits from unknown or circular {parent!r}", path=path)
        seen.add(parent)
        cfg = {**configs[parent], **cfg}
    return cfg


def _record_from(plans: dict[str, Any], dataset: dict[str, Any], config_name: str, ckpt: dict[str, Any],
                 folds: list[str], folder: Path) -> NnunetRecord:
    plans_path = folder / "plans.json"
    cfg = _config(plans, config_name, plans_path)
    if cfg.get("previous_stage"):
        raise CheckpointError(f"configuration {config_name!r} is a cascade stage (needs {cfg['previous_stage']!r})",
                              path=plans_path, hint="import the 3d_fullres or 3d_lowres configuration instead")
    reader = str(plans.get("image_reader_writer", "SimpleITKIO"))
    if reader not in SUPPORTED_READERS:
        raise CheckpointError(f"image reader {reader!r} is not supported", path=plans_path,
                              hint=f"supported: {', '.join(SUPPORTED_READERS)}")
    schemes = tuple(str(s) for s in cfg["normalization_schemes"])
    for s in schemes:
        if s not in SUPPORTED_NORMALISATIONS:
            raise CheckpointError(f"normalisation {s!r} is not supported", path=plans_path)
    props_all = plans.get("foreground_intensity_properties_per_channel") or \
        plans.get("foreground_intensity_properties_by_modality") or {}
    props = tuple({k: float(v) for k, v in props_all[str(c)].items()} if str(c) in props_all else None
                  for c in range(len(schemes)))
    arch = cfg.get("architecture")
    if not isinstance(arch, dict):
        raise CheckpointError(f"configuration {config_name!r} has no 'architecture' (nnU-Net < 2.4 plans)",
                              path=plans_path, hint="re-plan with a current nnU-Net v2")
    net_class = str(arch["network_class_name"])
    if net_class not in NETWORK_CLASSES:
        raise CheckpointError(f"network class {net_class!r} is not supported", path=plans_path,
                              hint=f"supported: {', '.join(NETWORK_CLASSES)}")
    kw_import = tuple(str(k) for k in arch.get("_kw_requires_import", ()))
    for key in kw_import:
        _layer_type_name(arch["arch_kwargs"].get(key), key, plans_path)
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    mirror = ckpt.get("inference_allowed_mirroring_axes")

    def res(kind: str) -> tuple[int, int, bool | None]:
        fn = cfg.get(f"resampling_fn_{kind}", "resample_data_or_seg_to_shape")
        if fn != "resample_data_or_seg_to_shape":
            raise CheckpointError(f"resampling function {fn!r} is not supported", path=plans_path)
        kw = cfg.get(f"resampling_fn_{kind}_kwargs", {})
        return (int(kw.get("order", 3 if kind == "data" else 1)), int(kw.get("order_z", 0)), kw.get("force_separate_z"))

    return NnunetRecord(
        dataset_name=str(plans.get("dataset_name", folder.parent.name)),
        plans_name=str(plans.get("plans_name", "")),
        trainer_name=str(ckpt.get("trainer_name", folder.name.split("__")[0])),
        configuration=config_name,
        folds=tuple(folds),
        image_reader=reader,
        file_ending=str(dataset.get("file_ending", ".nii.gz")),
        channel_names=tuple(str(channels[k]) for k in sorted(channels, key=int)),
        transpose_forward=tuple(int(i) for i in plans["transpose_forward"]),
        transpose_backward=tuple(int(i) for i in plans["transpose_backward"]),
        target_spacing=tuple(float(s) for s in cfg["spacing"]),
        patch_size=tuple(int(s) for s in cfg["patch_size"]),
        normalization_schemes=schemes,
        use_mask_for_norm=tuple(bool(b) for b in cfg["use_mask_for_norm"]),
        intensity_properties=props,
        resampling_data=res("data"),
        resampling_probabilities=res("probabilities"),
        network_class=net_class,
        network_kwargs=dict(arch["arch_kwargs"]),
        kw_requires_import=kw_import,
        num_input_channels=len(channels),
        labels=dict(dataset["labels"]),
        regions_class_order=tuple(int(c) for c in dataset["regions_class_order"])
        if dataset.get("regions_class_order") is not None else None,
        mirror_axes=tuple(int(a) for a in mirror) if mirror is not None else None,
        postprocessing=_postprocessing(folder, folds),
    )


def _layer_type_name(value: Any, key: str, path: Path | None = None) -> str | None:
    if value is None:
        return None
    match = _LAYER_NAME.match(str(value))
    if not match or match.group(2) not in LAYER_TYPES:
        raise CheckpointError(f"architecture '{key}' names {value!r}, which is not an allowed torch.nn layer type",
                              path=path, hint=f"allowed: {', '.join(sorted(LAYER_TYPES))}")
    return match.group(2)


def build_network(record: NnunetRecord) -> nn.Module:
    """The nnU-Net network (deep supervision off) built from allow-listed names only."""
    from torch import nn

    unet = _require_dna()
    cls = getattr(unet, NETWORK_CLASSES[record.network_class])
    kwargs = dict(record.network_kwargs)
    for key in record.kw_requires_import:
        name = _layer_type_name(kwargs.get(key), key)
        kwargs[key] = getattr(nn, name) if name is not None else None
    kwargs["deep_supervision"] = False
    return cls(input_channels=record.num_input_channels, num_classes=record.num_outputs, **kwargs)


@dataclass(frozen=True)
class ImportedNnunet:
    """An imported model in memory: its record and one state dict per fold."""

    record: NnunetRecord
    weights: dict[str, dict[str, torch.Tensor]]


def import_nnunet(folder: str | Path, out_dir: str | Path, folds: list[str] | None = None) -> Path:
    """Read a result folder safely and write ``out_dir/nnunet.json`` + ``fold_<k>.safetensors``; returns out_dir."""
    from safetensors.torch import save

    record, weights = read_result_folder(folder, folds)
    network = build_network(record)
    out = Path(out_dir)
    files: dict[str, str] = {}
    for fold, state in weights.items():
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"fold {fold}: weights do not fit the planned network "
                                  f"({str(err).splitlines()[0][:200]})", path=Path(folder) / f"fold_{fold}",
                                  hint="custom trainers that change the architecture are not supported") from err
        blob = save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()})
        name = f"fold_{fold}.safetensors"
        write_bytes_atomic(out / name, blob)
        files[name] = hashlib.sha256(blob).hexdigest()
    manifest = {"record": record.to_json(), "weights_sha256": files}
    with atomic_path(out / IMPORT_MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return out


def load_imported(path: str | Path, folds: list[str] | None = None) -> ImportedNnunet:
    """Read an import folder (or an nnU-Net result folder directly); weights are checked against their sha256."""
    from safetensors.torch import load

    path = Path(path)
    if not (path / IMPORT_MANIFEST).is_file():
        record, weights = read_result_folder(path, folds)
        return ImportedNnunet(record, weights)
    manifest = _read_json(path / IMPORT_MANIFEST)
    record = NnunetRecord.from_json(manifest.get("record", {}))
    chosen = folds if folds is not None else list(record.folds)
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    for fold in chosen:
        name = f"fold_{fold}.safetensors"
        expected = manifest.get("weights_sha256", {}).get(name)
        file = path / name
        if expected is None or not file.is_file():
            raise CheckpointError(f"missing weights for fold {fold}", path=file)
        blob = file.read_bytes()
        if hashlib.sha256(blob).hexdigest() != expected:
            raise CheckpointError("sha256 mismatch: the weights file was changed after import", path=file)
        loaded[str(fold)] = load(blob)
    return ImportedNnunet(record, loaded)
