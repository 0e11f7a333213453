"""Which cases a batch holds: from ``infer``-style inputs (files, folders, DICOM folders) or a manifest.

A manifest is a CSV or JSON list of cases, each a case id and its inputs:

- CSV with a header: ``case_id`` and then one column per input (one per channel, in the model's channel order, or
  columns named after the model's channels in any order); or an ``inputs`` column with ``;``-separated paths.
  A single input that is a folder is read as a DICOM series.
- JSON: ``[{"case_id": "a", "inputs": ["a.nii.gz"]}, ...]`` (or ``{"cases": [...]}``).

Relative paths are read relative to the manifest's folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from medpipe.batch.records import BatchCase, check_case_id
from medpipe.errors import InputError


def cases_from_inputs(inputs: list[Path], channels: tuple[str, ...]) -> list[BatchCase]:
    """The cases ``medpipe infer`` would segment for these inputs. A DICOM folder gets the id
    ``dicom-<10 hex digits of its path's sha1>`` (the ledger needs an id before the series is read)."""
    from medpipe.inference.inputs import collect_inputs

    out = []
    for c in collect_inputs(inputs, channels):
        if c.dicom_dir is not None:
            digest = hashlib.sha1(str(c.dicom_dir.resolve()).encode()).hexdigest()[:10]
            out.append(BatchCase(c.case_id or f"dicom-{digest}", dicom_dir=str(c.dicom_dir.resolve())))
        else:
            out.append(BatchCase(check_case_id(c.case_id, c.files[0]), tuple(str(f.resolve()) for f in c.files)))
    return _unique(out)


def load_manifest(path: Path, channels: tuple[str, ...]) -> list[BatchCase]:
    """Cases from a CSV or JSON manifest (see the module docstring)."""
    if not path.is_file():
        raise InputError("manifest not found", path=path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read manifest: {err}", path=path) from err
    rows = _json_rows(text, path) if path.suffix.lower() == ".json" else _csv_rows(text, path, channels)
    cases = [_case(case_id, inputs, path, n) for n, (case_id, inputs) in enumerate(rows, start=1)]
    if not cases:
        raise InputError("manifest lists no cases", path=path)
    return _unique(cases, path)


def _json_rows(text: str, path: Path) -> list[tuple[str, list[str]]]:
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"manifest is not valid JSON ({err.msg}, line {err.lineno})", path=path) from err
    items = data.get("cases") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise InputError("JSON manifest must be a list of cases or {\"cases\": [...]}", path=path)
    rows = []
    for n, item in enumerate(items, start=1):
        if not isinstance(item, dict) or "case_id" not in item or not isinstance(item.get("inputs"), list | str):
            raise InputError(f"case {n}: expected {{\"case_id\": ..., \"inputs\": [...]}}", path=path)
        inputs = item["inputs"] if isinstance(item["inputs"], list) else [item["inputs"]]
        rows.append((str(item["case_id"]), [str(i) for i in inputs]))
    return rows


def _csv_rows(text: str, path: Path, channels: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    if "case_id" not in header or len(header) < 2:
        raise InputError(f"CSV manifest needs a case_id column and input columns, found {header}", path=path,
                         hint="header like: case_id,image  (or case_id,inputs with ; between paths)")
    rest = [h for h in header if h != "case_id"]
    if set(channels) <= set(rest) and len(channels) > 1:
        rest = list(channels)
    rows = []
    for row in reader:
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if rest == ["inputs"]:
            inputs = [p.strip() for p in row["inputs"].split(";") if p.strip()]
        else:
            inputs = [row[h] for h in rest if row.get(h)]
        rows.append((row["case_id"], inputs))
    return rows


def _case(case_id: str, inputs: list[str], manifest: Path, n: int) -> BatchCase:
    check_case_id(case_id, f"{manifest} (case {n})")
    if not inputs:
        raise InputError(f"case {case_id}: no inputs", path=manifest)
    paths = [p if p.is_absolute() else (manifest.parent / p) for p in (Path(i) for i in inputs)]
    for p in paths:
        if not p.exists():
            raise InputError(f"case {case_id}: input not found: {p}", path=manifest)
    if len(paths) == 1 and paths[0].is_dir():
        return BatchCase(case_id, dicom_dir=str(paths[0].resolve()))
    return BatchCase(case_id, tuple(str(p.resolve()) for p in paths))


def _unique(cases: list[BatchCase], where: Path | None = None) -> list[BatchCase]:
    seen: dict[str, BatchCase] = {}
    for c in cases:
        if c.case_id in seen:
            raise InputError(f"two inputs give case '{c.case_id}'", path=where or (c.files or (c.dicom_dir,))[0],
                             hint="case ids name the outputs; make them unique")
        seen[c.case_id] = c
    return list(seen.values())
