"""Small runtime helpers shared by the stages: device choice, versions, hashing."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

from medpipe.errors import MedpipeError

__version__ = "0.1.0"


def resolve_device(requested: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda' without a GPU is an error."""
    import torch

    if requested not in ("auto", "cpu", "cuda") and not requested.startswith("cuda:"):
        raise MedpipeError(f"unknown device '{requested}'", hint="use auto, cpu, cuda or cuda:N")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise MedpipeError("--device cuda was requested but no CUDA device is visible", hint="use --device cpu")
    return requested


def device_reason(requested: str, device: str) -> str:
    """One line saying which device runs and why (``--device auto`` without a GPU, an explicit choice...)."""
    if requested == "auto":
        why = "a CUDA device is visible" if device.startswith("cuda") else "no CUDA device is visible"
        return f"running on {device}: --device auto and {why}"
    return f"running on {device}: requested with --device {requested}"


def versions() -> dict[str, str]:
    """Versions of the libraries that determine results (for provenance sidecars)."""
    import monai
    import nibabel
    import numpy
    import torch

    return {
        "medpipe": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "nibabel": nibabel.__version__,
        "numpy": numpy.__version__,
    }


#: Hex digits of the short hashes recorded beside outputs (config hash, dataset identity, cache keys).
SHORT_HASH_LEN = 16


def short_digest(data: bytes) -> str:
    """The short form of a sha256: what every config hash, dataset identity and cache key is made of."""
    return hashlib.sha256(data).hexdigest()[:SHORT_HASH_LEN]


def short_hash(value: object) -> str:
    """:func:`short_digest` of a value's canonical JSON (sorted keys; non-JSON values as ``str``)."""
    return short_digest(json.dumps(value, sort_keys=True, default=str).encode())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(paths: list[Path]) -> str:
    """One sha256 over several files (names excluded, order kept)."""
    digest = hashlib.sha256()
    for p in paths:
        digest.update(bytes.fromhex(sha256_file(p)))
    return digest.hexdigest()
