"""Which cases a batch holds: from ``infer``-style inputs (files, folders, DICOM folders) or a manifest.

A manifest is a CSV or JSON list of cases, each a case id and its inputs:

- CSV with a header: ``case_id`` and then one column per input (one per channel, in the model's channel order, or
  columns named after the model's channels in any order); or an ``inputs`` column with ``;``-separated paths.
  A single input that is a folder is read as a DICOM series.
- JSON: ``[{"case_id": "a", "inputs": ["a.nii.gz"]}, ...]`` (or ``{"cases": [...]}``).

A case may instead name a series on a DICOMweb server, which its worker pulls into the case's staging folder
before reading it (and deletes before committing the outputs): JSON ``{"case_id": "a", "dicomweb": {"url":
"https://pacs/dicom-web", "study_uid": "1.2...", "series_uid": "1.2..."}}``; CSV columns ``dicomweb_url``,
``study_uid`` and ``series_uid`` (a row with a ``dicomweb_url`` is such a case). ``series_uid`` may be left out
when the study holds one series. The URL carries no credentials (the workers read them from the environment or
a netrc file, as ``medpipe pull`` does).

Relative paths are read relative to the manifest's folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from medpipe.batch.records import BatchCase, RemoteSeries, check_case_id
from medpipe.errors import InputError, MedpipeError
from medpipe.io.dicomweb.auth import check_url
from medpipe.io.dicomweb.client import check_uid

#: CSV columns of a DICOMweb case.
REMOTE_COLUMNS = ("dicomweb_url", "study_uid", "series_uid")
Row = tuple[str, list[str], RemoteSeries | None]


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
    cases = [_case(case_id, inputs, remote, path, n) for n, (case_id, inputs, remote) in enumerate(rows, start=1)]
    if not cases:
        raise InputError("manifest lists no cases", path=path)
    return _unique(cases, path)


def _remote(url: str, study: str, series: str | None, path: Path, n: int) -> RemoteSeries:
    """A checked DICOMweb reference (the URL without credentials, the UIDs as UIDs)."""
    try:
        check_uid(study, "study")
        if series:
            check_uid(series, "series")
        return RemoteSeries(check_url(url), study, series or None)
    except MedpipeError as err:
        raise InputError(f"case {n}: {err.message}", path=path, hint=err.hint) from err


def _json_rows(text: str, path: Path) -> list[Row]:
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"manifest is not valid JSON ({err.msg}, line {err.lineno})", path=path) from err
    items = data.get("cases") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise InputError("JSON manifest must be a list of cases or {\"cases\": [...]}", path=path)
    rows: list[Row] = []
    for n, item in enumerate(items, start=1):
        web = item.get("dicomweb") if isinstance(item, dict) else None
        if isinstance(web, dict) and "case_id" in item:
            if not isinstance(web.get("url"), str) or not isinstance(web.get("study_uid"), str):
                raise InputError(f"case {n}: expected \"dicomweb\": {{\"url\": ..., \"study_uid\": ..., "
                                 "\"series_uid\": ... (optional)}", path=path)
            series = web.get("series_uid")
            rows.append((str(item["case_id"]), [], _remote(web["url"], web["study_uid"],
                                                           str(series) if series else None, path, n)))
            continue
        if not isinstance(item, dict) or "case_id" not in item or not isinstance(item.get("inputs"), list | str):
            raise InputError(f"case {n}: expected {{\"case_id\": ..., \"inputs\": [...]}} or "
                             "{\"case_id\": ..., \"dicomweb\": {...}}", path=path)
        inputs = item["inputs"] if isinstance(item["inputs"], list) else [item["inputs"]]
        rows.append((str(item["case_id"]), [str(i) for i in inputs], None))
    return rows


def _csv_rows(text: str, path: Path, channels: tuple[str, ...]) -> list[Row]:
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    if "case_id" not in header or len(header) < 2:
        raise InputError(f"CSV manifest needs a case_id column and input columns, found {header}", path=path,
                         hint="header like: case_id,image  (or case_id,inputs with ; between paths)")
    rest = [h for h in header if h != "case_id" and h not in REMOTE_COLUMNS]
    if set(channels) <= set(rest) and len(channels) > 1:
        rest = list(channels)
    rows: list[Row] = []
    for n, row in enumerate(reader, start=1):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if row.get("dicomweb_url"):
            if not row.get("study_uid"):
                raise InputError(f"case {n}: a dicomweb_url needs a study_uid", path=path)
            rows.append((row["case_id"], [], _remote(row["dicomweb_url"], row["study_uid"], row.get("series_uid"),
                                                     path, n)))
            continue
        if rest == ["inputs"]:
            inputs = [p.strip() for p in row["inputs"].split(";") if p.strip()]
        else:
            inputs = [row[h] for h in rest if row.get(h)]
        rows.append((row["case_id"], inputs, None))
    return rows


def _case(case_id: str, inputs: list[str], remote: RemoteSeries | None, manifest: Path, n: int) -> BatchCase:
    check_case_id(case_id, f"{manifest} (case {n})")
    if remote is not None:
        return BatchCase(case_id, remote=remote)
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
            raise InputError(f"two inputs give case '{c.case_id}'", path=where or c.source,
                             hint="case ids name the outputs; make them unique")
        seen[c.case_id] = c
    return list(seen.values())
