"""``pull``: QIDO-RS search + WADO-RS retrieve of a study or series into ``OUT/<SeriesUID>/<SOPInstanceUID>.dcm``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from medpipe.errors import RemoteError
from medpipe.io.atomic import ensure_writable_dir, write_with
from medpipe.io.dicomweb.client import FORMAT_VERSION, Connection, DicomwebOptions, check_uid, json_value


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

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PulledSeries:
        return cls(str(d["series_uid"]), Path(d["folder"]), int(d["n_instances"]), int(d["n_downloaded"]),
                   int(d["n_present"]))


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

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PullResult:
        return cls(str(d["server"]), str(d["study_uid"]), tuple(PulledSeries.from_json(s) for s in d["series"]),
                   int(d.get("format_version", FORMAT_VERSION)))


def pull(url: str, study_uid: str, series_uid: str | None = None, *, out_dir: Path,
         options: DicomwebOptions | None = None) -> PullResult:
    """Download a study (or one series of it) into ``out_dir/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``."""
    check_uid(study_uid, "study")
    if series_uid is not None:
        check_uid(series_uid, "series")
    conn = Connection(url, options or DicomwebOptions())
    ensure_writable_dir(out_dir)
    filters = {"SeriesInstanceUID": series_uid} if series_uid else None
    found = conn.call(f"searching study {study_uid}",
                      lambda: conn.client.search_for_series(study_instance_uid=study_uid, search_filters=filters,
                                                            get_remaining=True))
    uids = sorted({u for s in found if (u := json_value(s, "0020000E"))})
    if series_uid is not None:
        uids = [u for u in uids if u == series_uid]
    if not uids:
        what = f"series {series_uid} of study {study_uid}" if series_uid else f"study {study_uid}"
        raise RemoteError(f"{what} was not found on the server", path=conn.server,
                          hint="check the UID (medpipe info shows a local series' UIDs)")
    return PullResult(conn.server, study_uid, tuple(_pull_series(conn, study_uid, u, Path(out_dir)) for u in uids))


def _pull_series(conn: Connection, study_uid: str, series_uid: str, out_dir: Path) -> PulledSeries:
    """Every listed instance not yet in ``out_dir/<series>/``: one streamed WADO-RS request for the series, then
    one request per instance for any the stream did not deliver."""
    check_uid(series_uid, "series", conn.server)
    listed = conn.call(f"listing the instances of series {series_uid}",
                       lambda: conn.client.search_for_instances(study_instance_uid=study_uid,
                                                                series_instance_uid=series_uid, get_remaining=True))
    sops = sorted({u for i in listed if (u := json_value(i, "00080018"))})
    for sop in sops:
        check_uid(sop, "SOP instance", conn.server)
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


def _stream_series(conn: Connection, study_uid: str, series_uid: str, folder: Path, wanted: frozenset[str]) -> None:
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


def _retrieve(conn: Connection, study_uid: str, series_uid: str, sop: str) -> Any:
    """One instance as stored (any transfer syntax); a server that cannot send that (HTTP 406) sends its default."""
    import requests

    try:
        return conn.client.retrieve_instance(study_uid, series_uid, sop, media_types=(("application/dicom", "*"),))
    except requests.HTTPError as err:
        if err.response is None or err.response.status_code != 406:
            raise
    return conn.client.retrieve_instance(study_uid, series_uid, sop)


