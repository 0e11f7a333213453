"""``push``: STOW-RS of DICOM files, every file checked first, every instance confirmed by the response."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from medpipe.errors import InputError, MedpipeError, RemoteError
from medpipe.io.dicomweb.client import FORMAT_VERSION, Connection, DicomwebOptions, check_uid

BATCH_FILES, BATCH_BYTES = 50, 64 * 2**20
# DICOM PS3.18 / PS3.4 failure reasons a STOW-RS response may carry
FAILURE_REASONS = {
    0x0110: "processing failure", 0x0122: "SOP class not supported", 0x0124: "not authorized",
    0xA700: "out of resources", 0xA900: "data set does not match SOP class", 0xC000: "cannot understand",
    0xC122: "transfer syntax not supported", 0xA770: "out of resources (storage)",
}


@dataclass(frozen=True)
class PushedInstance:
    """One file of a push (``file``: as given, or ``NAME in FOLDER``): ``status`` is stored (the server confirmed
    it) or failed (with the reason)."""

    file: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    status: str
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "sop_instance_uid": self.sop_instance_uid, "study_uid": self.study_uid,
                "series_uid": self.series_uid, "status": self.status, "reason": self.reason}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PushedInstance:
        return cls(str(d["file"]), str(d["sop_instance_uid"]), str(d["study_uid"]), str(d["series_uid"]),
                   str(d["status"]), d.get("reason"))


@dataclass(frozen=True)
class PushResult:
    """What ``push`` sent: every instance with its outcome; ``ok`` only if the server confirmed all of them."""

    server: str
    instances: tuple[PushedInstance, ...] = field(default_factory=tuple)
    format_version: int = FORMAT_VERSION

    @property
    def n_stored(self) -> int:
        return sum(i.status == "stored" for i in self.instances)

    @property
    def failed(self) -> tuple[PushedInstance, ...]:
        return tuple(i for i in self.instances if i.status != "stored")

    @property
    def ok(self) -> bool:
        return bool(self.instances) and not self.failed

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "server": self.server, "ok": self.ok,
                "n_stored": self.n_stored, "n_failed": len(self.failed),
                "instances": [i.to_json() for i in self.instances]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PushResult:
        return cls(str(d["server"]), tuple(PushedInstance.from_json(i) for i in d["instances"]),
                   int(d.get("format_version", FORMAT_VERSION)))


@dataclass(frozen=True)
class _Header:
    path: Path
    shown: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    size: int


def push(url: str, files: Sequence[Path], *, study_uid: str | None = None,
         options: DicomwebOptions | None = None) -> PushResult:
    """Store DICOM files (or every DICOM file under folders) on the server with STOW-RS; with ``study_uid``,
    into that study only (``POST studies/{uid}``: the server refuses instances of other studies).

    Every file is checked before anything is sent. Each instance is reported stored only if the response lists
    it as stored; a network failure that outlasts the retries raises :class:`RemoteError` saying how many
    instances were stored before it."""
    if study_uid is not None:
        check_uid(study_uid, "study")
    headers = _read_headers(collect_dicom_files(files))
    conn = Connection(url, options or DicomwebOptions())
    results: list[PushedInstance] = []
    for batch in _batches(headers):
        try:
            response = conn.call(f"storing {len(batch)} instance(s)", partial(_store, conn, batch, study_uid))
        except MedpipeError as err:
            stored = sum(r.status == "stored" for r in results)
            raise RemoteError(f"{err.message}; {stored} of {len(headers)} instance(s) were stored before this "
                              "failure, the others were not", path=conn.server, hint=err.hint) from err
        results.extend(_outcomes(batch, response))
    return PushResult(conn.server, tuple(results))


def collect_dicom_files(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    """Files as given (each must be DICOM Part 10) and every DICOM Part 10 file under folders (hidden skipped),
    each with how messages name it: as given, or ``NAME in FOLDER`` for a file found inside a given folder
    (sub-folder names of PACS exports can carry patient names; they are never shown)."""
    found: dict[Path, str] = {}
    for p in map(Path, paths):
        if p.is_dir():
            inside = [f for f in sorted(p.rglob("*")) if f.is_file() and not f.name.startswith(".")
                      and _is_part10(f)]
            if not inside:
                raise InputError("no DICOM files in this folder", path=p)
            found.update((f, f"{f.name} in {p}") for f in inside if f not in found)
        elif p.is_file():
            if not _is_part10(p):
                raise InputError("not a DICOM file (no DICM marker at byte 128)", path=p)
            found.setdefault(p, str(p))
        else:
            raise InputError("no such file or folder", path=p)
    if not found:
        raise InputError("no files to push")
    return list(found.items())


def _is_part10(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _read_headers(paths: list[tuple[Path, str]]) -> list[_Header]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers: list[_Header] = []
    lacking: list[str] = []
    for p, shown in paths:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=[
                "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"])
        except (InvalidDicomError, OSError, ValueError, EOFError) as err:
            raise InputError(f"cannot read DICOM header: {type(err).__name__}", path=shown) from err
        uids = [str(ds.get(k, "") or "").strip() for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                                                            "SOPClassUID")]
        if not all(uids):
            lacking.append(shown)
            continue
        headers.append(_Header(p, shown, uids[0], uids[1], uids[2], p.stat().st_size))
    if lacking:
        raise InputError(f"{len(lacking)} of {len(paths)} file(s) lack a Study, Series or SOP Instance UID (or SOP "
                         "Class UID); DICOMweb servers index instances by these UIDs and refuse (Orthanc: silently "
                         "drop) such files. Nothing was sent", path=lacking[0],
                         hint="give the files UIDs first, e.g. with dcmodify or pydicom; medpipe infer and convert "
                              "read such series locally")
    return headers


def _batches(headers: list[_Header]) -> Iterator[list[_Header]]:
    batch: list[_Header] = []
    size = 0
    for h in headers:
        if batch and (len(batch) >= BATCH_FILES or size + h.size > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(h)
        size += h.size
    if batch:
        yield batch


def _store(conn: Connection, batch: list[_Header], study_uid: str | None) -> Any:
    """POST one batch; a 409 Conflict (some instances failed) still carries a per-instance response."""
    import pydicom
    import requests

    datasets = [pydicom.dcmread(h.path) for h in batch]
    try:
        return conn.client.store_instances(datasets, study_instance_uid=study_uid)
    except requests.HTTPError as err:
        if err.response is not None and err.response.status_code == 409 and err.response.content:
            try:
                return pydicom.Dataset.from_json(err.response.json())
            except ValueError:
                pass
        raise


def _outcomes(batch: list[_Header], response: Any) -> list[PushedInstance]:
    stored = {str(i.get("ReferencedSOPInstanceUID", "")) for i in response.get("ReferencedSOPSequence", [])}
    failed = {str(i.get("ReferencedSOPInstanceUID", "")): i.get("FailureReason")
              for i in response.get("FailedSOPSequence", [])}
    out = []
    for h in batch:
        if h.sop_instance_uid in failed:
            status, reason = "failed", _reason(failed[h.sop_instance_uid])
        elif h.sop_instance_uid in stored:
            status, reason = "stored", None
        else:
            status, reason = "failed", "the server did not confirm storing it"
        out.append(PushedInstance(h.shown, h.sop_instance_uid, h.study_uid, h.series_uid, status, reason))
    return out


def _reason(code: Any) -> str:
    try:
        value = int(code)
    except (TypeError, ValueError):
        return "the server refused it"
    return f"the server refused it: 0x{value:04X} {FAILURE_REASONS.get(value, '')}".rstrip()


