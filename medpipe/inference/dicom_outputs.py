"""DICOM outputs of a segmented case: ``<case>.seg.dcm`` (DICOM SEG) and ``<case>.rtstruct.dcm`` (RTSTRUCT), beside
the NIfTI mask, for cases read from a DICOM series. The NIfTI mask is always written: it is the contract-checked
mask and the record that lets a batch resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import InputError, OutputError
from medpipe.inference.inputs import InputCase, LoadedCase
from medpipe.io.dicom.seg import Algorithm, DicomOutput, write_seg
from medpipe.labels import label_table

FORMATS: tuple[str, ...] = ("nifti", "dicom-seg", "rtstruct")
DICOM_FORMATS: tuple[str, ...] = ("dicom-seg", "rtstruct")
SUFFIXES = {"dicom-seg": ".seg.dcm", "rtstruct": ".rtstruct.dcm"}


def parse_formats(text: str) -> tuple[str, ...]:
    """``"nifti,dicom-seg"`` -> ("nifti", "dicom-seg"); nifti is always included. InputError for unknown names."""
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise InputError(f"unknown output format {', '.join(unknown) or repr(text)}",
                         hint=f"use a comma list of {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f == "nifti" or f in names)


def check_inputs(cases: Sequence[InputCase], formats: Sequence[str]) -> None:
    """DICOM formats need DICOM inputs: refuse NIfTI inputs before any work."""
    wanted = [f for f in formats if f in DICOM_FORMATS]
    if not wanted:
        return
    for case in cases:
        if case.dicom_dir is None:
            raise InputError(f"--format {','.join(wanted)} needs a DICOM series as input, this is a NIfTI file",
                             path=case.files[0] if case.files else case.case_id,
                             hint="DICOM outputs reference the source images; use --format nifti for NIfTI inputs")


def is_repaired(case: LoadedCase) -> bool:
    """Was the series resampled by a repair (--allow-tilt / --allow-uneven)?"""
    return case.provenance.dicom is not None and bool(case.provenance.dicom.repairs)


def check_case(case: LoadedCase, formats: Sequence[str]) -> None:
    """Refusals known before inference (no work wasted)."""
    if "rtstruct" in formats and is_repaired(case):
        raise OutputError(
            "RTSTRUCT refused: the series was resampled by a repair (--allow-tilt/--allow-uneven), and RTSTRUCT "
            "contours must lie on the source images", path=case.case_id,
            hint="use --format nifti,dicom-seg (a SEG on the repaired grid with its own plane positions)")


def write_dicom_outputs(case: LoadedCase, labels: np.ndarray, out_dir: Path, formats: Sequence[str], *,
                        cfg: Any, model_sha256: str, seg_type: str = "binary") -> dict[str, DicomOutput]:
    """Write the requested DICOM outputs of ``labels`` (I, J, K on ``case.grid``); returns their sidecar records."""
    records: dict[str, DicomOutput] = {}
    wanted = [f for f in formats if f in DICOM_FORMATS]
    if not wanted:
        return records
    if not case.dicom_files:
        raise InputError("DICOM outputs need a DICOM series as input", path=case.case_id)
    table = label_table(cfg.labels, cfg.label_info)
    algorithm = Algorithm(cfg.name, model_sha256)
    repaired = is_repaired(case)
    if "dicom-seg" in wanted:
        path = out_dir / f"{case.case_id}{SUFFIXES['dicom-seg']}"
        written = write_seg(path, labels, case.grid, case.dicom_files, table, algorithm,
                            seg_type=seg_type, repaired=repaired)  # type: ignore[arg-type]  # checked there
        records["dicom-seg"] = written
    if "rtstruct" in wanted:
        from medpipe.io.dicom.rtstruct import write_rtstruct

        path = out_dir / f"{case.case_id}{SUFFIXES['rtstruct']}"
        records["rtstruct"] = write_rtstruct(path, labels, case.grid, case.dicom_files, table, algorithm)
    return records
