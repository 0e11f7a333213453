"""``medpipe import monai-bundle``: a MONAI bundle (model-zoo layout) -> a medpipe package, reading the config
as DATA. Nothing in the bundle is evaluated: MONAI's ``ConfigParser`` is never called here.

Read: ``configs/inference.json`` (or ``.yaml``) keys ``network_def`` (UNet, DynUNet, SegResNet, SwinUNETR),
``preprocessing`` (LoadImaged, EnsureChannelFirstd, Orientationd, Spacingd, ScaleIntensityRanged or
NormalizeIntensityd, EnsureTyped), ``inferer`` (SlidingWindowInferer) and ``postprocessing`` (Activationsd softmax,
Invertd, AsDiscreted argmax, KeepLargestConnectedComponentd, SaveImaged); ``configs/metadata.json`` (label names,
modality, version, licence); ``models/model.pt`` (a state dict, ``torch.load(weights_only=True)``). ``@key``
references are followed as data; any ``$`` expression, ``%`` file reference or other transform in these keys is
refused with the key named. Other keys (device, datalist, dataset, handlers, evaluator, ...) are not read.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import yaml

from medpipe.config import PipelineConfig, config_from_dict
from medpipe.errors import CheckpointError, ConfigError
from medpipe.models.manifest import Architecture, Fold, Manifest
from medpipe.runtime import versions

NETWORKS = ("UNet", "DynUNet", "SegResNet", "SwinUNETR")
#: Transforms that move data around without changing values, which medpipe's own chain does implicitly.
PASSIVE = {"LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureTyped", "ToTensord", "Invertd", "SaveImaged",
           "EnsureType", "ToDeviced"}
META_KEYS = {"_target_", "_desc_", "_requires_", "_disabled_"}


class BundleConfig:
    """The parsed ``inference`` config as plain data, with ``@`` references followed and everything else refused."""

    def __init__(self, raw: dict[str, Any], source: Path) -> None:
        self.raw = raw
        self.source = source

    def refuse(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"key '{key}': {why}", path=self.source,
                           hint="medpipe imports bundles built from standard MONAI components only")

    def lookup(self, ref: str, key: str) -> Any:
        node: Any = self.raw
        for part in ref.replace("#", "::").split("::"):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise self.refuse(key, f"reference '@{ref}' points at nothing")
        return node

    def resolve(self, value: Any, key: str, depth: int = 0) -> Any:
        """``value`` with ``@`` references replaced by their (resolved) data; expressions refused."""
        if depth > 20:
            raise self.refuse(key, "references nest too deeply (a cycle?)")
        if isinstance(value, str):
            if value.startswith("$"):
                raise self.refuse(key, f"expression {value[:60]!r} would be evaluated as Python code; refused")
            if value.startswith("%"):
                raise self.refuse(key, f"file reference {value[:60]!r} is not followed")
            if value.startswith("@"):
                return self.resolve(self.lookup(value[1:], key), f"{key} -> {value}", depth + 1)
            return value
        if isinstance(value, dict):
            return {k: self.resolve(v, f"{key}.{k}", depth) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, f"{key}[{i}]", depth) for i, v in enumerate(value)]
        return value

    def component(self, key: str) -> dict[str, Any]:
        if key not in self.raw:
            raise self.refuse(key, "missing")
        value = self.resolve(self.raw[key], key)
        if not isinstance(value, dict) or "_target_" not in value:
            raise self.refuse(key, "expected a component with '_target_'")
        return value

    def transforms(self, key: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(key of the item, class name, arguments) of a Compose's transforms. The arguments of transforms in
        :data:`PASSIVE` (loading, saving, inverting) are not read; the others' are resolved."""
        if key not in self.raw:
            raise self.refuse(key, "missing")
        comp = self.raw[key]
        if isinstance(comp, str) and comp.startswith("@"):
            comp = self.lookup(comp[1:], key)
        items = comp.get("transforms") if isinstance(comp, dict) else None
        if not isinstance(comp, dict) or target_name(comp.get("_target_")) != "Compose" or not isinstance(items, list):
            raise self.refuse(key, "expected a Compose with a 'transforms' list")
        out = []
        for i, item in enumerate(items):
            where = f"{key}.transforms[{i}]"
            if isinstance(item, str) and item.startswith("@"):
                item = self.lookup(item[1:], where)
            if not isinstance(item, dict) or "_target_" not in item:
                raise self.refuse(where, "expected a transform component")
            name = target_name(self.resolve(item["_target_"], f"{where}._target_"))
            if item.get("_disabled_") in (True, "true", "True"):
                continue
            args = {k: v for k, v in item.items() if k not in META_KEYS}
            out.append((where, name, args if name in PASSIVE else self.resolve(args, where)))
        return out


def target_name(target: Any) -> str:
    """``monai.transforms.Spacingd`` / ``Spacingd`` -> ``Spacingd``; anything not a monai name kept whole."""
    text = str(target)
    for prefix in ("monai.transforms.", "monai.networks.nets.", "monai.inferers.", "monai.networks.nets.unet.",
                   "monai.data."):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def _read_config(bundle: Path) -> tuple[dict[str, Any], Path]:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        path = bundle / "configs" / name
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
                raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as err:
                raise ConfigError(f"not valid {path.suffix[1:].upper()} ({err})", path=path) from err
            if not isinstance(raw, dict):
                raise ConfigError("expected a mapping at the top level", path=path)
            return raw, path
    raise ConfigError("bundle has no configs/inference.json", path=bundle, hint="expected the model-zoo layout")


def _scalar(value: Any) -> Any:
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def _preprocessing(cfg: BundleConfig) -> dict[str, Any]:
    """Translate the preprocessing chain into medpipe's transform settings (orientation, spacing, intensity)."""
    out: dict[str, Any] = {"crop_foreground": False, "augment": False}
    seen: list[str] = []
    for where, name, args in cfg.transforms("preprocessing"):
        if name in PASSIVE:
            continue
        if name == "Orientationd":
            out["orientation"] = str(args.get("axcodes", ""))
            _only(cfg, where, args, {"keys", "axcodes", "labels"})
        elif name == "Spacingd":
            if str(_scalar(args.get("mode", "bilinear"))) != "bilinear":
                raise cfg.refuse(f"{where}.mode", f"image interpolation {args.get('mode')!r} (medpipe uses bilinear)")
            if str(_scalar(args.get("padding_mode", "border"))) != "border" or args.get("align_corners"):
                raise cfg.refuse(where, "only the default padding (border) and align_corners=False are supported")
            _only(cfg, where, args, {"keys", "pixdim", "mode", "padding_mode", "align_corners", "dtype"})
            out["spacing_mm"] = [float(p) for p in args["pixdim"]]
        elif name == "ScaleIntensityRanged":
            scaling = (float(args.get("b_min", 0)), float(args.get("b_max", 1)), bool(args.get("clip", False)))
            if scaling != (0.0, 1.0, True):
                raise cfg.refuse(where, "only clipping to [a_min, a_max] scaled to [0, 1] (b_min 0, b_max 1, clip "
                                        "true) has a medpipe equivalent")
            _only(cfg, where, args, {"keys", "a_min", "a_max", "b_min", "b_max", "clip"})
            out["intensity"], out["hu_window"] = "ct_window", [float(args["a_min"]), float(args["a_max"])]
        elif name == "NormalizeIntensityd":
            if not (args.get("nonzero") and args.get("channel_wise")):
                raise cfg.refuse(where, "only nonzero=true, channel_wise=true z-scoring has a medpipe equivalent")
            _only(cfg, where, args, {"keys", "nonzero", "channel_wise"})
            out["intensity"] = "zscore_nonzero"
        else:
            raise cfg.refuse(where, f"transform '{name}' has no medpipe equivalent")
        seen.append(name)
    expected = ["Orientationd", "Spacingd"]
    if seen[:2] != expected or len(seen) != 3:
        raise cfg.refuse("preprocessing", f"medpipe needs Orientationd, Spacingd, then one intensity transform; "
                                          f"found {seen}")
    return out


def _only(cfg: BundleConfig, where: str, args: dict[str, Any], allowed: set[str]) -> None:
    for key in args:
        if key not in allowed:
            raise cfg.refuse(f"{where}.{key}", "argument not supported by the importer")


def _inference(cfg: BundleConfig) -> tuple[dict[str, Any], list[int]]:
    inferer = cfg.component("inferer")
    if target_name(inferer["_target_"]) != "SlidingWindowInferer":
        raise cfg.refuse("inferer", f"'{inferer['_target_']}' (medpipe runs SlidingWindowInferer only)")
    _only(cfg, "inferer", {k: v for k, v in inferer.items() if k not in META_KEYS},
          {"roi_size", "sw_batch_size", "overlap", "mode"})
    mode = str(inferer.get("mode", "constant"))
    if mode not in ("constant", "gaussian"):
        raise cfg.refuse("inferer.mode", f"blend mode {mode!r}")
    inference = {"roi_size_vox": [int(v) for v in inferer["roi_size"]], "overlap": float(inferer.get("overlap", 0.25)),
                 "sw_batch_size": int(inferer.get("sw_batch_size", 1)), "blend": mode, "amp": False}
    keep: list[int] = []
    if "postprocessing" in cfg.raw:
        for where, name, args in cfg.transforms("postprocessing"):
            if name in PASSIVE:
                continue
            if name == "Activationsd" and args.get("softmax") and not args.get("sigmoid"):
                continue
            if name == "AsDiscreted" and args.get("argmax") and not args.get("threshold"):
                continue
            if name == "KeepLargestConnectedComponentd" and args.get("applied_labels"):
                keep += [int(v) for v in args["applied_labels"]]
                continue
            raise cfg.refuse(where, f"postprocessing '{name}' with {sorted(args)} has no medpipe equivalent "
                                    "(softmax + argmax outputs only)")
    return inference, keep


def _network(cfg: BundleConfig) -> Architecture:
    key = "network_def" if "network_def" in cfg.raw else "network"
    comp = cfg.component(key)
    name = target_name(comp["_target_"])
    if name not in NETWORKS:
        raise cfg.refuse(f"{key}._target_", f"network '{comp['_target_']}' is not one of {', '.join(NETWORKS)}")
    return Architecture(name, {k: v for k, v in comp.items() if k not in META_KEYS})


def _metadata(bundle: Path) -> dict[str, Any]:
    path = bundle / "configs" / "metadata.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"not valid JSON ({err})", path=path) from err
    return meta if isinstance(meta, dict) else {}


def _state_dict(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise CheckpointError("bundle weights not found", path=path, hint="expected models/model.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"refused: not a plain weights file ({str(err).splitlines()[0][:160]})",
                              path=path) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"corrupt weights file ({str(err).splitlines()[0][:160]})", path=path) from err
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("expected a state dict of tensors", path=path)
    return state


def bundle_config(bundle: Path) -> tuple[PipelineConfig, Architecture, dict[str, Any]]:
    """The medpipe config and network a bundle translates to, and its metadata (nothing evaluated)."""
    raw, source = _read_config(bundle)
    cfg = BundleConfig(raw, source)
    arch = _network(cfg)
    transforms = _preprocessing(cfg)
    inference, keep = _inference(cfg)
    meta = _metadata(bundle)
    fmt = meta.get("network_data_format", {})
    channel_def = fmt.get("outputs", {}).get("pred", {}).get("channel_def", {})
    out_ch = int(arch.args.get("out_channels", len(channel_def) or 2))
    labels = {int(k): str(v) for k, v in channel_def.items()} or {i: ("background" if i == 0 else f"label_{i}")
                                                                  for i in range(out_ch)}
    in_ch = int(arch.args.get("in_channels", 1))
    modality = str(fmt.get("inputs", {}).get("image", {}).get("modality", "CT")).upper()
    raw_cfg = {
        "name": str(meta.get("name") or bundle.name), "modality": "MR" if modality.startswith("M") else "CT",
        "channels": ["image"] if in_ch == 1 else [f"{i:04d}" for i in range(in_ch)], "labels": labels,
        "transforms": {**transforms, "patch_size_vox": inference["roi_size_vox"]},
        "inference": {**inference, "keep_largest": keep},
    }
    return config_from_dict(raw_cfg, source=f"{source} (translated)"), arch, meta


def import_monai_bundle(bundle: Path, dest: Path, licence: str | None = None) -> Manifest:
    """Write the package of a MONAI bundle to ``dest``; refusals name the bundle file and key."""
    from medpipe.models.factory import build_network
    from medpipe.models.package import safetensors_bytes, write_package
    from medpipe.models.packaging import manifest_from_config

    cfg, arch, meta = bundle_config(bundle)
    if cfg.out_channels != int(arch.args.get("out_channels", cfg.out_channels)):
        raise ConfigError(f"metadata has {cfg.num_classes} labels but the network {arch.args.get('out_channels')} "
                          "outputs", path=bundle / "configs" / "metadata.json")
    net = build_network(arch.name, dict(arch.args))
    weights = bundle / "models" / "model.pt"
    try:
        net.load_state_dict(_state_dict(weights), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"weights do not fit network_def: {str(err)[:300]}", path=weights) from err
    licence_text = licence or str(meta.get("license") or meta.get("copyright") or "unspecified")
    training: dict[str, Any] = {k: meta[k] for k in ("data_source", "data_type", "image_classes", "label_classes",
                                                     "pred_classes", "eval_metrics", "intended_use", "description")
                                if k in meta}
    manifest = manifest_from_config(cfg, [Fold(0, "weights/fold_0.safetensors", None, _metrics(meta))], training,
                                    licence_text, cfg.name, versions())
    manifest = dataclasses.replace(manifest, architecture=arch,
                                   source={"kind": "monai-bundle", "bundle": bundle.name,
                                           "version": str(meta.get("version", "")),
                                           "monai_version": str(meta.get("monai_version", ""))})
    return write_package(dest, manifest, {"weights/fold_0.safetensors": safetensors_bytes(net.eval())})


def _metrics(meta: dict[str, Any]) -> dict[str, float]:
    """Numbers from the bundle's ``eval_metrics`` (e.g. ``{"mean_dice": 0.96}``)."""
    values = meta.get("eval_metrics", {})
    return {str(k): float(v) for k, v in values.items() if isinstance(v, int | float)} if isinstance(values,
                                                                                                      dict) else {}
