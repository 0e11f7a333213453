"""Options declared once (``Annotated``) and the small command-line mini-languages."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from medpipe.errors import ConfigError

SegType = Literal["binary", "labelmap"]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA if available), cpu or cuda.")]


def load_cli_config(path: Path) -> Any:
    """The pipeline config of a YAML file (imported lazily: ``--help`` stays fast)."""
    from medpipe.config import load_config

    return load_config(path)


def parse_labels(text: str) -> dict[int, str]:
    """``"1=liver,2=spleen"`` (or ``"1:liver"``) -> ``{1: "liver", 2: "spleen"}``; :class:`ConfigError` if malformed."""
    out: dict[int, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, name = item.replace(":", "=", 1).partition("=")
        if not sep or not key.strip().isdigit():
            raise ConfigError(f"bad label entry {item!r}", hint="write labels as 1=liver,2=spleen")
        out[int(key)] = name.strip()
    return out


def parse_tolerances(text: str) -> float | dict[int, float]:
    """``"2"`` -> 2.0 mm for every label; ``"1=1.0,2=2.5"`` -> per label id; :class:`ConfigError` if malformed."""
    try:
        if "=" not in text and ":" not in text:
            value = float(text)
            if not math.isfinite(value) or value < 0:
                raise ValueError(text)
            return value
        out = {int(k): float(v) for k, _, v in (s.replace(":", "=").partition("=") for s in text.split(","))}
    except ValueError as err:
        raise ConfigError(f"bad NSD tolerance {text!r}", hint="write 2.0 or 1=1.0,2=2.5 (mm)") from err
    if any(not math.isfinite(v) or v < 0 for v in out.values()):
        raise ConfigError(f"NSD tolerances must be finite and >= 0, got {text!r}")
    return out


# DICOMweb (pull, push, infer --push): credentials never travel on the command line, only where to find them
NetrcFile = Annotated[Path | None, typer.Option(
    "--netrc", help="netrc file with the server's login (default: MEDPIPE_DICOMWEB_USER/_PASSWORD or "
                    "MEDPIPE_DICOMWEB_TOKEN from the environment, then ~/.netrc).")]
Insecure = Annotated[bool, typer.Option("--insecure", help="Do not verify the server's TLS certificate.")]
Retries = Annotated[int, typer.Option("--retries", min=0, max=10, help="Retries of a failed network request.")]


def dicomweb_options(netrc_file: Path | None, insecure: bool, retries: int) -> Any:
    """The library's DicomwebOptions (imported lazily)."""
    from medpipe.io.dicomweb import DicomwebOptions

    return DicomwebOptions(netrc_file=netrc_file, insecure=insecure, retries=retries)


def parse_folds(text: str | None) -> list[int] | None:
    """``"0,2"`` or ``"0 2"`` -> [0, 2]; None -> None (all folds); :class:`ConfigError` if malformed."""
    if text is None:
        return None
    items = [t for t in text.replace(",", " ").split() if t]
    if not items or not all(t.isdigit() for t in items):
        raise ConfigError(f"bad --folds {text!r}", hint="write fold numbers: --folds 0,2 or --folds '0 2'")
    return [int(t) for t in items]
