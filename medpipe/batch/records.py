"""What the batch runner keeps on disk: the batch spec, its cases, per-case claims, failures and completions.

Every record is a frozen dataclass with a format version and ``to_json``/``from_json``; the ledger folder
(``OUT/ledger/``) holds them as JSON files.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medpipe.errors import InputError, OutputError

SPEC_FORMAT = "medpipe-batch-spec/1"
CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


def check_case_id(case_id: str, where: str | Path | None = None) -> str:
    """A case id names files in the ledger: letters, digits and ``._+-`` only, not starting with a dot."""
    if not CASE_ID_RE.match(case_id):
        raise InputError(f"case id {case_id!r} cannot name a file in the ledger",
                         path=where, hint="use letters, digits and . _ + - (up to 200 characters)")
    return case_id


@dataclass(frozen=True)
class RemoteSeries:
    """A case's input on a DICOMweb server: the server's root URL (no credentials in it), a study and optionally
    one series of it. The worker pulls it into the case's staging folder before reading."""

    url: str
    study_uid: str
    series_uid: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "study_uid": self.study_uid, "series_uid": self.series_uid}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RemoteSeries:
        series = d.get("series_uid")
        return cls(str(d["url"]), str(d["study_uid"]), str(series) if series else None)


@dataclass(frozen=True)
class BatchCase:
    """One unit of work: a case id and its inputs (NIfTI files in channel order, one DICOM folder, or a series on a
    DICOMweb server)."""

    case_id: str
    files: tuple[str, ...] = ()
    dicom_dir: str | None = None
    remote: RemoteSeries | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"case_id": self.case_id, "files": list(self.files), "dicom_dir": self.dicom_dir}
        if self.remote is not None:
            d["remote"] = self.remote.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BatchCase:
        remote = d.get("remote")
        return cls(str(d["case_id"]), tuple(str(f) for f in d.get("files", ())), d.get("dicom_dir"),
                   RemoteSeries.from_json(remote) if isinstance(remote, dict) else None)

    @property
    def source(self) -> str:
        """What to name in messages: the first input file, the DICOM folder, or the server and study."""
        if self.remote is not None:
            return f"{self.remote.url} study {self.remote.study_uid}"
        return self.files[0] if self.files else str(self.dicom_dir)


@dataclass(frozen=True)
class BatchSpec:
    """What every worker needs to run the batch: the model, its identity and the inference options.

    ``model_sha256`` and ``config_hash`` are the identity a finished case's sidecar must carry to count as done.
    ``infer_options`` are passed through to the predictor adapter unchanged (device, overlap, DICOM options...).
    """

    model: str
    checkpoint: str
    model_sha256: str
    config_hash: str
    infer_options: dict[str, Any] = field(default_factory=dict)
    lease_s: float = 60.0
    case_timeout_s: float | None = None
    max_attempts: int = 2
    submitted_at: float = 0.0
    launcher: str = "local"
    format: str = SPEC_FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BatchSpec:
        if d.get("format") != SPEC_FORMAT:
            raise OutputError(f"batch spec format {d.get('format')!r}, expected {SPEC_FORMAT}",
                              hint="this ledger was written by another medpipe version")
        timeout = d.get("case_timeout_s")
        return cls(str(d["model"]), str(d["checkpoint"]), str(d["model_sha256"]), str(d["config_hash"]),
                   dict(d.get("infer_options") or {}), float(d.get("lease_s", 60.0)),
                   None if timeout is None else float(timeout), int(d.get("max_attempts", 2)),
                   float(d.get("submitted_at", 0.0)), str(d.get("launcher", "local")))


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one case (the content of ``ledger/locks/<case>.lock``); the lease is the file's mtime
    plus ``lease_s``. ``state`` is ``queued`` (held in reserve by a worker's pipeline), ``running`` (its case in
    the network or being written; ``claimed_at`` is then when it started), or ``crashed`` once the launcher saw the
    worker die."""

    case_id: str
    token: str
    worker: str
    host: str
    pid: int
    pid_start: str
    attempt: int
    claimed_at: float
    state: str = "running"
    reason: str | None = None
    format: str = "medpipe-batch-lock/1"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Claim:
        reason = d.get("reason")
        return cls(str(d["case_id"]), str(d["token"]), str(d["worker"]), str(d["host"]), int(d["pid"]),
                   str(d["pid_start"]), int(d["attempt"]), float(d["claimed_at"]), str(d.get("state", "running")),
                   None if reason is None else str(reason))


@dataclass(frozen=True)
class Failure:
    """Why a case failed (``ledger/failed/<case>.json``): ``kind`` is error (the case itself, not retried),
    crash (its worker died twice) or timeout."""

    case_id: str
    kind: str
    reason: str
    attempts: int
    failed_at: float
    worker: str = ""
    format: str = "medpipe-batch-failure/1"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Failure:
        return cls(str(d["case_id"]), str(d["kind"]), str(d["reason"]), int(d["attempts"]), float(d["failed_at"]),
                   str(d.get("worker", "")))


@dataclass(frozen=True)
class Completion:
    """How a finished case was computed (``ledger/done/<case>.json``, written just before its sidecar)."""

    case_id: str
    worker: str
    host: str
    attempt: int
    claimed_at: float
    finished_at: float
    inputs_stat: list[list[int]] = field(default_factory=list)  # [size, mtime_ns] of each input file
    format: str = "medpipe-batch-done/1"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Completion:
        return cls(str(d["case_id"]), str(d["worker"]), str(d["host"]), int(d["attempt"]), float(d["claimed_at"]),
                   float(d["finished_at"]), [[int(v) for v in st] for st in d.get("inputs_stat", [])])


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing or not (yet) a complete JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
