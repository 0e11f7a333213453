"""DICOMweb: pull a study or series (QIDO-RS search + WADO-RS retrieve) and push files (STOW-RS), with
dicomweb-client.

- Credentials come from the environment or a netrc file (:mod:`medpipe.io.dicomweb_auth`), never from the
  command line; messages and records name the server without userinfo.
- TLS certificates are verified unless ``insecure``.
- Network failures (refused or dropped connections, timeouts, HTTP 408/429/502/503/504) are retried
  ``retries`` times with exponential backoff, then raise :class:`RemoteError` naming the server and the step.
- A pull lists the instances (QIDO-RS), streams each series in one WADO-RS request and fetches any instance
  the stream missed on its own. Instances are written atomically as ``OUT/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
  (UIDs checked to be UIDs, so a server cannot choose a path); instances already there are kept (a re-run
  resumes).
- A push checks every file first (Orthanc silently drops files without Study/Series/SOP Instance UIDs) and
  reports each instance as stored only when the server's STOW-RS response lists it as stored.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from medpipe.errors import InputError, MedpipeError, RemoteError
from medpipe.io.atomic import ensure_writable_dir, write_with
from medpipe.io.dicomweb_auth import CREDENTIAL_HINT, Credentials, check_url, resolve_credentials, server_name

FORMAT_VERSION = 1
RETRIABLE_HTTP = (408, 429, 502, 503, 504)
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
BATCH_FILES, BATCH_BYTES = 50, 64 * 2**20
# DICOM PS3.18 / PS3.4 failure reasons a STOW-RS response may carry
FAILURE_REASONS = {
    0x0110: "processing failure", 0x0122: "SOP class not supported", 0x0124: "not authorized",
    0xA700: "out of resources", 0xA900: "data set does not match SOP class", 0xC000: "cannot understand",
    0xC122: "transfer syntax not supported", 0xA770: "out of resources (storage)",
}
T = TypeVar("T")


@dataclass(frozen=True)
class DicomwebOptions:
    """How to talk to a server: netrc file, TLS verification, retries (after the first try) and timeouts."""

    netrc_file: Path | None = None
    insecure: bool = False
    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 30.0


@dataclass(frozen=True)
class PulledSeries:
    series_uid: str
    folder: Path
    n_instances: int
    n_downloaded: int
    n_present: int

    def to_json(self) -> dict[str, Any]:
        return {"series_uid": self.series_uid, "folder": str(self.folder), "n_instances": self.n_instances,
                "n_downloaded": self.n_downloaded, "n_present": self.n_present}


@dataclass(frozen=True)
class PullResult:
    """What ``pull`` wrote: one folder per series, every instance the server listed."""

    server: str
    study_uid: str
    series: tuple[PulledSeries, ...]
    format_version: int = FORMAT_VERSION

    @property
    def n_instances(self) -> int:
        return sum(s.n_instances for s in self.series)

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "server": self.server, "study_uid": self.study_uid,
                "series": [s.to_json() for s in self.series]}


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


@dataclass(frozen=True)
class PushResult:
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


class _Connection:
    """A dicomweb-client bound to one server with medpipe's retry, TLS and error policy."""

    def __init__(self, url: str, options: DicomwebOptions) -> None:
        import requests
        from dicomweb_client import DICOMwebClient

        self.url = check_url(url)
        self.server = server_name(url)
        self.options = options
        self.credentials: Credentials = resolve_credentials(self.url, options.netrc_file)
        session = requests.Session()
        session.verify = not options.insecure
        if self.credentials.kind == "basic":
            session.auth = (self.credentials.user or "", self.credentials.secret or "")
        elif self.credentials.kind == "bearer":
            session.headers["Authorization"] = f"Bearer {self.credentials.secret}"
        self.client = DICOMwebClient(self.url, session=session, timeout=options.timeout_s)
        self.client.set_http_retry_params(retry=False)  # medpipe's own bounded loop below

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` with bounded retries; a :class:`RemoteError` naming the server and ``what`` when it fails."""
        import requests
        from pydicom.errors import InvalidDicomError
        from urllib3.exceptions import InsecureRequestWarning

        attempts = max(1, self.options.retries + 1)
        for attempt in range(1, attempts + 1):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", InsecureRequestWarning)
                    return fn()
            except requests.HTTPError as err:
                status = err.response.status_code if err.response is not None else 0
                if status in RETRIABLE_HTTP and attempt < attempts:
                    self._wait(attempt)
                    continue
                raise self._http_error(what, status, attempt) from err
            except requests.exceptions.SSLError as err:
                raise RemoteError(f"{what} failed: TLS certificate verification failed", path=self.server,
                                  hint="set REQUESTS_CA_BUNDLE to your CA file; --insecure only for a server "
                                       "you trust") from err
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
                if attempt < attempts:
                    self._wait(attempt)
                    continue
                kind = ("timed out" if isinstance(err, requests.Timeout) or "timed out" in str(err)
                        else "the connection broke" if isinstance(err, requests.exceptions.ChunkedEncodingError)
                        else "could not connect")
                raise RemoteError(f"{what} failed: {kind} after {attempts} attempt(s)", path=self.server,
                                  hint="check the URL and that the server is running") from err
            except requests.RequestException as err:
                raise RemoteError(f"{what} failed: {type(err).__name__}", path=self.server) from err
            except (ValueError, InvalidDicomError) as err:  # a response dicomweb-client/pydicom cannot decode
                raise RemoteError(f"{what} failed: the server's answer could not be decoded", path=self.server,
                                  hint="is the URL the DICOMweb root (e.g. http://host:8042/dicom-web)?") from err
        raise RemoteError(f"{what} failed", path=self.server)  # not reached: the loop returns or raises

    def _wait(self, attempt: int) -> None:
        time.sleep(self.options.backoff_s * 2 ** (attempt - 1))

    def _http_error(self, what: str, status: int, attempts: int) -> RemoteError:
        if status == 401:
            found = ("the server requires credentials" if self.credentials.kind == "none"
                     else f"the server refused the {self.credentials.describe()}")
            return RemoteError(f"{what} failed: {found} (HTTP 401)", path=self.server, hint=CREDENTIAL_HINT)
        if status == 403:
            return RemoteError(f"{what} failed: access forbidden for the {self.credentials.describe()} (HTTP 403)",
                               path=self.server)
        if status == 404:
            return RemoteError(f"{what} failed: not found (HTTP 404)", path=self.server,
                               hint="is the URL the DICOMweb root (e.g. http://host:8042/dicom-web)?")
        tries = f" after {attempts} attempt(s)" if status in RETRIABLE_HTTP else ""
        return RemoteError(f"{what} failed: HTTP {status}{tries}", path=self.server)


def pull(url: str, study_uid: str, series_uid: str | None = None, *, out_dir: Path,
         options: DicomwebOptions | None = None) -> PullResult:
    """Download a study (or one series of it) into ``out_dir/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``."""
    _check_uid(study_uid, "study")
    if series_uid is not None:
        _check_uid(series_uid, "series")
    conn = _Connection(url, options or DicomwebOptions())
    ensure_writable_dir(out_dir)
    filters = {"SeriesInstanceUID": series_uid} if series_uid else None
    found = conn.call(f"searching study {study_uid}",
                      lambda: conn.client.search_for_series(study_instance_uid=study_uid, search_filters=filters,
                                                            get_remaining=True))
    uids = sorted({u for s in found if (u := _json_value(s, "0020000E"))})
    if series_uid is not None:
        uids = [u for u in uids if u == series_uid]
    if not uids:
        what = f"series {series_uid} of study {study_uid}" if series_uid else f"study {study_uid}"
        raise RemoteError(f"{what} was not found on the server", path=conn.server,
                          hint="check the UID (medpipe info shows a local series' UIDs)")
    return PullResult(conn.server, study_uid, tuple(_pull_series(conn, study_uid, u, Path(out_dir)) for u in uids))


def _pull_series(conn: _Connection, study_uid: str, series_uid: str, out_dir: Path) -> PulledSeries:
    """Every listed instance not yet in ``out_dir/<series>/``: one streamed WADO-RS request for the series, then
    one request per instance for any the stream did not deliver."""
    _check_uid(series_uid, "series", conn.server)
    listed = conn.call(f"listing the instances of series {series_uid}",
                       lambda: conn.client.search_for_instances(study_instance_uid=study_uid,
                                                                series_instance_uid=series_uid, get_remaining=True))
    sops = sorted({u for i in listed if (u := _json_value(i, "00080018"))})
    for sop in sops:
        _check_uid(sop, "SOP instance", conn.server)
    folder = out_dir / series_uid
    missing = [sop for sop in sops if not (folder / f"{sop}.dcm").is_file()]
    if len(missing) > 1:
        conn.call(f"retrieving series {series_uid}",
                  partial(_stream_series, conn, study_uid, series_uid, folder, frozenset(missing)))
    for sop in missing:
        dest = folder / f"{sop}.dcm"
        if dest.is_file():
            continue
        ds = conn.call(f"retrieving instance {sop}", partial(_retrieve, conn, study_uid, series_uid, sop))
        if str(getattr(ds, "SOPInstanceUID", "")) != sop:
            raise RemoteError(f"retrieving instance {sop}: the server sent another instance", path=conn.server)
        write_with(dest, partial(_save, ds))
    return PulledSeries(series_uid, folder, len(sops), len(missing), len(sops) - len(missing))


def _stream_series(conn: _Connection, study_uid: str, series_uid: str, folder: Path, wanted: frozenset[str]) -> None:
    """Write each wanted instance as the multipart stream delivers it (a retry skips those already written);
    instances the server did not list are ignored."""
    import requests

    try:
        _write_wanted(conn.client.iter_series(study_uid, series_uid, media_types=(("application/dicom", "*"),)),
                      folder, wanted)
    except requests.HTTPError as err:
        if err.response is None or err.response.status_code != 406:
            raise
        _write_wanted(conn.client.iter_series(study_uid, series_uid), folder, wanted)


def _write_wanted(parts: Iterator[Any], folder: Path, wanted: frozenset[str]) -> None:
    for ds in parts:
        sop = str(getattr(ds, "SOPInstanceUID", ""))
        if sop in wanted and not (folder / f"{sop}.dcm").is_file():
            write_with(folder / f"{sop}.dcm", partial(_save, ds))


def _save(ds: Any, tmp: Path) -> None:
    ds.save_as(tmp, enforce_file_format=True)


def _retrieve(conn: _Connection, study_uid: str, series_uid: str, sop: str) -> Any:
    """One instance as stored (any transfer syntax); a server that cannot send that (HTTP 406) sends its default."""
    import requests

    try:
        return conn.client.retrieve_instance(study_uid, series_uid, sop, media_types=(("application/dicom", "*"),))
    except requests.HTTPError as err:
        if err.response is None or err.response.status_code != 406:
            raise
    return conn.client.retrieve_instance(study_uid, series_uid, sop)


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
        _check_uid(study_uid, "study")
    headers = _read_headers(collect_dicom_files(files))
    conn = _Connection(url, options or DicomwebOptions())
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


def _store(conn: _Connection, batch: list[_Header], study_uid: str | None) -> Any:
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


def _json_value(item: dict[str, Any], tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


def _check_uid(uid: str, what: str, server: str | None = None) -> None:
    if not (0 < len(uid) <= 64 and UID_RE.match(uid)):
        if server:
            raise RemoteError(f"the server listed a {what} UID that is not a DICOM UID", path=server)
        raise InputError(f"not a DICOM {what} UID: {uid!r}", hint="UIDs are digits and dots, at most 64 characters")
