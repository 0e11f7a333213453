"""What every layout shares: the records (:class:`Case`, :class:`Dataset`, :class:`Issue`), the issue collector and
small file-finding helpers. Discovery never reads voxels."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpipe.errors import DatasetError
from medpipe.io.nifti import NIFTI_SUFFIXES

#: How many problems an exception message lists before "... and N more".
SHOWN_PROBLEMS = 12


@dataclass(frozen=True)
class Issue:
    """One problem found in a dataset. ``severity`` is "error" (training refuses) or "warning"."""

    severity: str
    check: str
    case_id: str
    path: str
    message: str

    def __str__(self) -> str:
        who = f"case {self.case_id}: " if self.case_id else ""
        return f"{self.path}: {who}{self.message}"

    def to_json(self) -> dict[str, str]:
        return {"severity": self.severity, "check": self.check, "case": self.case_id, "path": self.path,
                "message": self.message}


@dataclass(frozen=True)
class Case:
    """One case: its channel images (in channel order, or one 4D file) and its label map (None if unlabelled)."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None

    def as_dict(self) -> dict[str, object]:
        """The MONAI-style data dict: ``image`` (path or list of paths), ``label``, ``case_id``."""
        image: object = str(self.images[0]) if len(self.images) == 1 else [str(p) for p in self.images]
        out: dict[str, object] = {"image": image, "case_id": self.case_id}
        if self.label is not None:
            out["label"] = str(self.label)
        return out


@dataclass(frozen=True)
class Dataset:
    """Cases of one dataset, what the layout says about channels, labels and regions, and discovery issues."""

    root: Path
    format: str
    cases: tuple[Case, ...]
    channel_names: tuple[str, ...]
    labels: dict[int, str] | None
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    issues: tuple[Issue, ...] = ()

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]


class Found:
    """Collects cases and issues while a layout is walked."""

    def __init__(self) -> None:
        self.cases: list[Case] = []
        self.issues: list[Issue] = []

    def error(self, check: str, case_id: str, path: Path, message: str) -> None:
        self.issues.append(Issue("error", check, case_id, str(path), message))

    def warn(self, check: str, case_id: str, path: Path, message: str) -> None:
        self.issues.append(Issue("warning", check, case_id, str(path), message))


def visible_nifti(folder: Path) -> list[Path]:
    """NIfTI files of a folder, without hidden files (MSD archives carry macOS ``._*`` companions)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.endswith(NIFTI_SUFFIXES))


def find(folder: Path, stem: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; :class:`DatasetError` naming the file when it is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"unreadable JSON ({err})", path=path, hint="fix the file's syntax") from err
    if not isinstance(data, dict):
        raise DatasetError(f"expected a JSON object, found {type(data).__name__}", path=path)
    return data


def int_keyed(mapping: Any, key: str, path: Path) -> list[tuple[int, str]]:
    if not isinstance(mapping, dict) or not mapping:
        raise DatasetError(f"'{key}' must be a non-empty object", path=path)
    try:
        return sorted((int(k), str(v)) for k, v in mapping.items())
    except ValueError as err:
        raise DatasetError(f"'{key}' keys must be integers, found {sorted(mapping)}", path=path) from err


def check_label_map(labels: dict[int, str], path: Path, consecutive: bool) -> None:
    """S7: background present, no duplicate names, (nnU-Net) consecutive values."""
    values = sorted(labels)
    if 0 not in labels:
        raise DatasetError(f"label map has no background (0): {labels}", path=path)
    names = [n.lower() for n in labels.values()]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DatasetError(f"label map names {dupes} more than once", path=path)
    if consecutive and values != list(range(len(values))):
        raise DatasetError(f"label values must be consecutive 0..{len(values) - 1}, found {values}", path=path,
                           hint="nnU-Net requires consecutive labels")


def raise_for(issues: list[Issue] | tuple[Issue, ...], what: str, path: Path | str) -> None:
    """Raise one :class:`DatasetError` listing the errors among ``issues`` (none: return)."""
    errors = [i for i in issues if i.severity == "error"]
    if not errors:
        return
    lines = [f"  - {i}" for i in errors[:SHOWN_PROBLEMS]]
    if len(errors) > SHOWN_PROBLEMS:
        lines.append(f"  ... and {len(errors) - SHOWN_PROBLEMS} more (run `medpipe dataset check`)")
    noun = "problem" if len(errors) == 1 else "problems"
    raise DatasetError(f"{len(errors)} {noun} {what}:\n" + "\n".join(lines), path=path)
