"""``medpipe infer --push URL``: after a successful case, send its DICOM SEG (``<case>.seg.dcm``) back to the
DICOMweb server, and record the outcome in the case's sidecar under ``dicomweb_push``.

A case counts as pushed only when the server confirmed the SEG instance. A SEG of a source series without Study or
Series Instance UIDs (the writer derived them) is not sent: it could not join the source study. A re-run that skips
an already segmented case still pushes it unless the sidecar records a confirmed push of the same SEG to the same
server.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from medpipe.errors import ConfigError, MedpipeError
from medpipe.inference.sidecar import CasePush, InferenceSidecar, read_sidecar
from medpipe.io.atomic import write_json_atomic
from medpipe.io.dicomweb import DicomwebOptions, push
from medpipe.io.dicomweb.auth import check_url, resolve_credentials, server_name

SEG_SUFFIX = ".seg.dcm"


@dataclass(frozen=True)
class PushTarget:
    """Where ``infer`` sends each case's SEG (credentials are looked up by the library, never stored here)."""

    url: str
    options: DicomwebOptions = field(default_factory=DicomwebOptions)


def check_push_formats(formats: Collection[str], target: PushTarget | None) -> None:
    """Before any work: ``--push`` sends the DICOM SEG, so it needs ``dicom-seg`` among the output formats."""
    if target is None:
        return
    if "dicom-seg" not in formats:
        raise ConfigError(f"--push sends each case's DICOM SEG (<case>{SEG_SUFFIX}), but the output formats are "
                          f"{', '.join(formats) or 'none'}", hint="add --format dicom-seg (e.g. --format "
                                                                   "nifti,dicom-seg)")
    preflight(target)


def preflight(target: PushTarget) -> None:
    """A usable URL and credentials that can be found, checked before any case is segmented."""
    resolve_credentials(check_url(target.url), target.options.netrc_file)


def push_case(out_dir: Path, case_id: str, target: PushTarget) -> CasePush:
    """Push ``out_dir/<case_id>.seg.dcm`` (unless the sidecar records it as pushed) and record the outcome."""
    seg = out_dir / f"{case_id}{SEG_SUFFIX}"
    side = out_dir / f"{case_id}.json"
    server = server_name(target.url)
    record = read_sidecar(side)  # read once: what was pushed before, what the SEG writer derived
    if not seg.is_file():
        outcome = CasePush(server, seg.name, "failed", reason=f"no {seg.name} was written to push "
                                                               "(--push needs --format dicom-seg)")
    elif (done := _already_pushed(record, seg, server)) is not None:
        return done
    elif missing := _source_uids_missing(record):
        outcome = CasePush(server, seg.name, "failed", reason=(
            f"the source images have no {' or '.join(missing)}, so the SEG (which carries UIDs medpipe derived) "
            "cannot join the source study on the server; not sent. Give the source images their UIDs and re-run, "
            "or send the SEG on purpose with medpipe push"))
    else:
        outcome = _push(seg, server, target)
    if record is not None:  # a case without a sidecar has nothing to add the outcome to
        write_json_atomic(side, replace(record, dicomweb_push=outcome).to_json())
    return outcome


def _push(seg: Path, server: str, target: PushTarget) -> CasePush:
    try:
        result = push(target.url, [seg], options=target.options)
    except MedpipeError as err:
        return CasePush(server, seg.name, "failed", reason=err.message)
    (inst,) = result.instances
    return CasePush(result.server, seg.name, "ok" if inst.status == "stored" else "failed", inst.sop_instance_uid,
                    inst.study_uid, inst.series_uid, inst.reason)


def _source_uids_missing(record: InferenceSidecar | None) -> list[str]:
    """Study/Series Instance UIDs the source series lacked (the SEG writer derived them), from the sidecar."""
    written = record.dicom_outputs.get("dicom-seg") if record is not None else None
    derived = written.extra.get("derived_uids", []) if written is not None else []
    return [k for k in ("StudyInstanceUID", "SeriesInstanceUID") if k in derived]


def _already_pushed(record: InferenceSidecar | None, seg: Path, server: str) -> CasePush | None:
    prior = record.dicomweb_push if record is not None else None
    if prior is None:
        return None
    try:
        sop = str(pydicom.dcmread(seg, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
    except (OSError, InvalidDicomError, AttributeError):
        return None
    if prior.ok and prior.server == server and prior.sop_instance_uid == sop:
        return CasePush(server, seg.name, "ok", sop, prior.study_uid, prior.series_uid)
    return None

