"""A list of cases: a CSV (``image`` with channels separated by ``;``, ``label``, optional ``case_id``) or JSON
(a list, or ``{"cases": [...]}`` / ``{"training": [...]}`` of ``{"image": path | [paths], "label": path}``);
relative paths are relative to the list file."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from medpipe.datasets.layouts.base import Case, Dataset, Found
from medpipe.errors import DatasetError
from medpipe.io.nifti import case_id_from_path


def looks_like(root: Path) -> bool:
    """A ``.csv`` or ``.json`` file."""
    return root.is_file() and root.suffix in (".csv", ".json")


def _list_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".json":
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(f"unreadable JSON ({err})", path=path) from err
        if isinstance(data, dict):
            data = data.get("cases", data.get("training"))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DatasetError("expected a list of {image, label} objects (or {\"cases\": [...]})", path=path)
        return data
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"unreadable CSV ({err})", path=path) from err


def discover(path: Path) -> Dataset:
    f = Found()
    n_channels: int | None = None
    for i, row in enumerate(_list_rows(path)):
        raw = row.get("image")
        if not raw:
            f.error("layout", "", path, f"row {i + 1} has no 'image'")
            continue
        parts = raw if isinstance(raw, list) else str(raw).split(";")
        images = tuple((path.parent / str(p).strip()).resolve() for p in parts)
        cid = str(row.get("case_id") or case_id_from_path(images[0]))
        label = (path.parent / str(row["label"]).strip()).resolve() if row.get("label") else None
        absent = [p for p in (*images, *([label] if label else [])) if not p.is_file()]
        if absent:
            f.error("missing", cid, absent[0], "listed file does not exist")
            continue
        if label is None:
            f.error("missing", cid, path, f"row {i + 1} has no label")
        if n_channels is not None and len(images) != n_channels:
            f.error("channels", cid, path, f"{len(images)} channel files, other rows have {n_channels}")
            continue
        n_channels = len(images)
        f.cases.append(Case(cid, images, label))
    names = tuple(f"ch{i}" for i in range(n_channels or 1))
    cases = f.cases
    stems = [c.case_id for c in cases]
    parents = [c.images[0].parent.name for c in cases]
    if len(set(stems)) < len(stems) and len(set(parents)) == len(parents):  # KiTS-like: every file imaging.nii.gz
        cases = [Case(p, c.images, c.label) if c.case_id == case_id_from_path(c.images[0]) else c
                 for c, p in zip(cases, parents, strict=True)]
    return Dataset(path, "list", tuple(cases), names, None, issues=tuple(f.issues))
