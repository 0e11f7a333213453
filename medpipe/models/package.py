"""medpipe packages: one safe, self-describing model artifact (a zip, also usable unpacked).

Layout: ``medpipe.json`` (the manifest, :mod:`medpipe.models.manifest`), ``weights/fold_<k>.safetensors`` (one per
fold, written with ``safetensors.torch.save_model`` because DynUNet shares tensors) and, with ``--onnx``,
``onnx/fold_<k>.onnx``. Loading never executes code from the package and never unpickles: the manifest is JSON
checked against the schema, weights are safetensors, and every file's sha256 is checked against the manifest; a
missing file, an extra file, an unknown manifest version or a sha256 mismatch is refused naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
from torch import nn

from medpipe.config import PipelineConfig, config_from_dict
from medpipe.errors import CheckpointError, InputError
from medpipe.io.atomic import write_with
from medpipe.models.factory import build_network
from medpipe.models.manifest import MANIFEST_NAME, FileEntry, Manifest
from medpipe.models.onnx import OnnxModule

ENGINES = ("torch", "onnxruntime")


def is_package(path: Path) -> bool:
    """A ``.zip`` file, or a folder holding ``medpipe.json``."""
    return (path.is_file() and path.suffix.lower() == ".zip") or (path.is_dir() and (path / MANIFEST_NAME).is_file())


@dataclass(frozen=True)
class PackageContents:
    """A package read and checked: its manifest, the sha256 of the manifest bytes, and every file's bytes."""

    path: Path
    manifest: Manifest
    manifest_sha256: str
    files: dict[str, bytes]
    size_bytes: int

    def to_json(self) -> dict[str, Any]:
        """The model card: where the package is, its size, and the manifest."""
        return {"path": str(self.path), "size_bytes": self.size_bytes, "manifest_sha256": self.manifest_sha256,
                "verified": True, "manifest": self.manifest.to_json()}


def _read_members(path: Path) -> dict[str, bytes]:
    """Every file of a zip or a folder, by POSIX relative name (links and odd names refused)."""
    members: dict[str, bytes] = {}
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_symlink():
                raise CheckpointError("links are not allowed in a package", path=f)
            if f.is_file():
                members[f.relative_to(path).as_posix()] = f.read_bytes()
        return members
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                name = info.filename
                if name.startswith("/") or ".." in name.split("/") or "\\" in name:
                    raise CheckpointError(f"unsafe member name '{name}' in the package", path=path)
                members[name] = zf.read(info)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(f"not a readable zip ({str(err)[:160]})", path=path) from err
    return members


def read_package(path: str | Path) -> PackageContents:
    """Read a package and check it completely (schema, format version, file list, every sha256)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError("package not found", path=path)
    if not is_package(path):
        raise CheckpointError(f"not a medpipe package (expected a .zip or a folder with {MANIFEST_NAME})", path=path)
    members = _read_members(path)
    where = f"{path}:{MANIFEST_NAME}"
    if MANIFEST_NAME not in members:
        raise CheckpointError(f"package has no {MANIFEST_NAME}", path=path)
    blob = members.pop(MANIFEST_NAME)
    try:
        raw = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"manifest is not valid JSON ({err})", path=where) from err
    manifest = Manifest.from_json(raw, where)
    listed = {e.path for e in manifest.files}
    for name in sorted(set(members) - listed):
        raise CheckpointError(f"file '{name}' is not listed in the manifest (refused: packages hold only listed "
                              "files)", path=path, hint="remove it, or re-package")
    for entry in manifest.files:
        if entry.path not in members:
            raise CheckpointError(f"file '{entry.path}' listed in the manifest is missing", path=path)
        digest = hashlib.sha256(members[entry.path]).hexdigest()
        if digest != entry.sha256:
            raise CheckpointError(f"sha256 mismatch for '{entry.path}': manifest {entry.sha256[:12]}..., file "
                                  f"{digest[:12]}... (the file was changed)", path=path)
    for fold in manifest.folds:
        for fold_file in (fold.weights, fold.onnx):
            if fold_file is not None and fold_file not in listed:
                raise CheckpointError(f"fold {fold.fold}: '{fold_file}' is not among the manifest's files", path=where)
    size = path.stat().st_size if path.is_file() else len(blob) + sum(len(b) for b in members.values())
    return PackageContents(path, manifest, hashlib.sha256(blob).hexdigest(), members, size)


def manifest_kind(path: Path) -> str | None:
    """``preprocessing.kind`` of a package's manifest, read without any check (None if it cannot be read): only
    to choose a loader, which then checks the package completely."""
    try:
        if path.is_dir():
            blob = (path / MANIFEST_NAME).read_bytes()
        else:
            with zipfile.ZipFile(path) as zf:
                blob = zf.read(MANIFEST_NAME)
        kind = json.loads(blob.decode("utf-8"))["preprocessing"]["kind"]
    except (OSError, KeyError, TypeError, zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return kind if isinstance(kind, str) else None


def package_info(path: str | Path) -> PackageContents:
    """The model card of a package (checked like any load)."""
    return read_package(path)


def config_of_manifest(manifest: Manifest, where: str | Path = MANIFEST_NAME) -> PipelineConfig:
    """The pipeline config medpipe runs a ``kind: medpipe`` package with (its sliding window from the manifest)."""
    pre = manifest.preprocessing
    if pre.kind != "medpipe":
        hint = ("run it on its own with `medpipe infer PACKAGE ...` or `medpipe batch` (nnU-Net packages are not "
                "ensembled with other models, and `medpipe explain` does not run them yet)" if pre.kind == "nnunet"
                else "this medpipe version cannot run it")
        raise CheckpointError(f"preprocessing kind '{pre.kind}' is not run by this loader", path=where, hint=hint)
    raw = dict(pre.config)
    raw["labels"] = {int(k): v for k, v in raw.get("labels", {}).items()}
    cfg = config_from_dict(raw, source=f"{where} (preprocessing.config)")
    sw = manifest.sliding_window
    return cfg.with_overrides(inference={"roi_size_vox": tuple(sw.patch_size_vox), "overlap": sw.overlap,
                                         "blend": sw.blend, "sw_batch_size": sw.sw_batch_size})


def load_weights(model: nn.Module, data: bytes, name: str) -> None:
    """Load safetensors bytes strictly; names that ``save_model`` dropped must share storage with loaded ones."""

    try:
        state = safetensors.torch.load(data)
    except (safetensors.SafetensorError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"not a valid safetensors file ({str(err)[:160]})", path=name) from err
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"weights do not fit the architecture: {str(err)[:300]}", path=name) from err
    ptrs = {t.data_ptr() for k, t in model.state_dict().items() if k in state}
    really_missing = [k for k in missing if model.state_dict()[k].data_ptr() not in ptrs]
    if really_missing or unexpected:
        raise CheckpointError(f"weights do not fit the architecture: missing {really_missing[:5]}, unexpected "
                              f"{list(unexpected)[:5]}", path=name)


def load_package_models(path: str | Path, device: str = "cpu", engine: str = "torch",
                        folds: list[int] | None = None) -> tuple[list[nn.Module], PipelineConfig, str]:
    """The networks of a package (one per fold, in eval mode), the pipeline config, and the manifest's sha256.

    ``engine`` torch: the MONAI network with its safetensors weights; onnxruntime: the fold's ONNX file run by
    ONNX Runtime on the CPU (refused if the package has none)."""
    contents = read_package(path)
    manifest = contents.manifest
    cfg = config_of_manifest(manifest, Path(path) / MANIFEST_NAME)
    if engine not in ENGINES:
        raise InputError(f"unknown engine '{engine}'", hint="torch or onnxruntime")
    chosen = [f for f in manifest.folds if folds is None or f.fold in folds]
    if not chosen:
        raise InputError(f"folds {folds} are not in the package (it has {[f.fold for f in manifest.folds]})",
                         path=path)
    models: list[nn.Module] = []
    for fold in chosen:
        if engine == "onnxruntime":
            if fold.onnx is None:
                raise CheckpointError(f"fold {fold.fold} has no ONNX file", path=path,
                                      hint="re-package with --onnx, or use --engine torch")
            if device != "cpu":
                raise InputError("the onnxruntime engine runs on the CPU", hint="pass --device cpu")

            models.append(OnnxModule(contents.files[fold.onnx]))
            continue
        arch = manifest.architecture
        net = build_network(arch.name, dict(arch.args), arch.slice_wise)
        load_weights(net, contents.files[fold.weights], f"{path}:{fold.weights}")
        models.append(net.to(device).eval())
    return models, cfg, contents.manifest_sha256


def write_package(dest: Path, manifest: Manifest, files: dict[str, bytes]) -> Manifest:
    """Write ``files`` plus the manifest (with the sha256 of every file filled in) as a zip (``.zip``) or a
    folder (any other name), atomically. Returns the final manifest."""

    entries = tuple(FileEntry(name, hashlib.sha256(data).hexdigest(), len(data))
                    for name, data in sorted(files.items()))
    final = dataclasses.replace(manifest, files=entries)
    raw = final.to_json()
    Manifest.from_json(raw, str(dest))  # what we write must pass what we read
    blob = (json.dumps(raw, indent=2) + "\n").encode("utf-8")

    def write_zip(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST_NAME, blob)
            for name, data in sorted(files.items()):
                zf.writestr(name, data)

    if dest.suffix.lower() == ".zip":
        write_with(dest, write_zip)
    else:
        if dest.exists():
            raise CheckpointError("output folder already exists", path=dest, hint="choose a new name")
        with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.exists() else None) as tmpdir:
            staging = Path(tmpdir) / "pkg"
            for name, data in {MANIFEST_NAME: blob, **files}.items():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_bytes(data)
            staging.rename(dest)
    return final


def safetensors_bytes(model: nn.Module) -> bytes:
    """The model's weights as safetensors bytes (``save_model``: shared tensors stored once)."""

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir) / "w.safetensors"
        safetensors.torch.save_model(model, str(tmp))
        return tmp.read_bytes()

