"""From a scanned candidate to a trusted volume: checks, pixels, opt-in repairs, affine and provenance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import DicomError
from medpipe.io.dicom import repair
from medpipe.io.dicom.geometry import StackGeometry, analyse, candidate_notes, lps_affine_to_ras
from medpipe.io.dicom.options import DicomOptions
from medpipe.io.dicom.pixels import read_stack
from medpipe.io.dicom.provenance import (
    DicomProvenance,
    Repair,
    ScanSummary,
    SeriesSource,
    ValueSummary,
)
from medpipe.io.dicom.scan import ScanResult, VolumeCandidate, scan_folder, select_candidate
from medpipe.io.geometry import Grid
from medpipe.io.intensity import check_ct_hu

_REPAIR_FLAGS = {"allow_tilt": "--allow-tilt", "allow_uneven": "--allow-uneven"}


@dataclass(frozen=True, eq=False)
class DicomVolume:
    """A DICOM volume in nibabel convention.

    ``array``: float32 (I, J, K) = (columns, rows, slices), modality LUT applied (HU for CT).
    ``affine``: 4x4, voxel index to RAS+ mm, so ``nib.Nifti1Image(array, affine)`` is correctly placed.
    ``provenance``: decisions, checks, repairs and skipped-file counts (no patient data, no paths).
    ``integer_valued``: every voxel is an integer (no repair interpolated, integer slope and intercept).
    ``source_files``: the files of the images, in slice order (each once; the basis of DICOM SEG/RTSTRUCT outputs).
    """

    array: np.ndarray
    affine: np.ndarray
    series_uid: str
    series_number: int | None
    description: str
    modality: str
    provenance: DicomProvenance
    label: str = ""
    integer_valued: bool = False
    source_files: tuple[Path, ...] = ()

    @property
    def grid(self) -> Grid:
        """The voxel grid (shape and affine) for the geometry contract."""
        i, j, k = self.array.shape
        return Grid((i, j, k), self.affine)


def refusal(cand: VolumeCandidate, geom: StackGeometry, folder: Path, allowed: dict[str, bool]) -> DicomError | None:
    """The error for problems that are not opted into a repair (None when the volume can be built)."""
    fatal = [p for p in geom.problems if not (p.repair and allowed.get(p.repair))]
    if not fatal:
        return None
    flags = sorted({_REPAIR_FLAGS[p.repair] for p in fatal if p.repair})
    hint = None
    if flags and all(p.repair for p in fatal):
        hint = f"re-run with {' '.join(flags)} to resample the stack (recorded in the sidecar)"
    elif flags:
        hint = f"{' '.join(flags)} would repair part of this; the rest cannot be repaired"
    return DicomError(f"{cand.shown}: {'; '.join(p.message for p in fatal)}", path=folder, hint=hint)


def _checks(geom: StackGeometry, cand: VolumeCandidate) -> dict[str, str]:
    found = {p.code: p.message for p in geom.problems}
    checks = {}
    for code, what in (
        ("pixels", "pixel data pre-flight (sizes, decoder, truncation)"),
        ("missing_geometry", "geometry tags present"),
        ("invalid_iop", "orientation valid"),
        ("too_few", f"at least 3 slices ({cand.n_images})"),
        ("duplicate", "no duplicate positions"),
        ("tilt", "slice positions along the normal (no gantry tilt)"),
        ("spacing", "even slice spacing"),
    ):
        hit = found.get(code) or (found.get("uneven") or found.get("missing_slices") if code == "spacing" else None)
        checks[what] = "ok" if hit is None else f"FAILED: {hit}"
    return checks


def load_candidate(
    scan: ScanResult,
    cand: VolumeCandidate,
    options: DicomOptions | None = None,
) -> DicomVolume:
    """Check, read and (where opted in) repair one candidate. Raises :class:`DicomError` naming the problems."""
    geom = analyse(cand)
    options = options or DicomOptions()
    error = refusal(cand, geom, scan.folder, options.repairs_allowed())
    if error is not None:
        raise error
    if (geom.row_cos is None or geom.col_cos is None or geom.normal is None or geom.ipp is None
            or geom.positions_mm is None or geom.spacing_mm is None):  # excluded by refusal() above
        raise ValueError("geometry not established after the checks")
    frames = [cand.frames[i] for i in geom.order]
    stack, values = read_stack(frames, scan.folder, workers=options.workers)
    codes = {p.code: p for p in geom.problems}
    repairs: list[Repair] = []
    origin = geom.ipp[0]
    dx, dy, dz = geom.spacing_mm
    if "tilt" in codes:
        fixed = repair.detilt(stack, geom.ipp, geom.row_cos, geom.col_cos, (dx, dy), codes["tilt"].message,
                              geom.tilt_deg)
        stack, origin = fixed.stack, fixed.origin_lps
        repairs.append(fixed.record)
    spacing_problem = codes.get("uneven") or codes.get("missing_slices")
    if spacing_problem is not None:
        stack, dz, record = repair.equalise(stack, geom.positions_mm, spacing_problem.message)
        repairs.append(record)
    affine = lps_affine_to_ras(geom.row_cos, geom.col_cos, geom.normal, (dx, dy, dz), origin)
    vmin, vmax = float(stack.min()), float(stack.max())
    warnings = []
    if cand.modality == "CT" and (hu := check_ct_hu(stack.T)).problem:
        warnings.append(f"CT values do not look like HU ({hu.describe()}): {hu.problem}")
    provenance = _provenance(scan, cand, geom, affine, stack.shape, values, repairs, warnings, (vmin, vmax))
    return DicomVolume(
        array=stack.T,
        affine=affine,
        series_uid=cand.series_uid,
        series_number=cand.series_number,
        description=cand.description,
        modality=cand.modality,
        provenance=provenance,
        label=cand.label,
        integer_valued=values.integer_valued and not repairs,
        source_files=tuple(dict.fromkeys(f.path for f in frames)),
    )


def _provenance(
    scan: ScanResult,
    cand: VolumeCandidate,
    geom: StackGeometry,
    affine: np.ndarray,
    shape_kji: tuple[int, ...],
    values: Any,
    repairs: list[Repair],
    warnings: list[str],
    value_range: tuple[float, float],
) -> DicomProvenance:
    k, j, i = shape_kji
    syntaxes = sorted({f.fmt.syntax_name for f in cand.frames})
    if geom.normal is None:  # only established geometries reach the sidecar
        raise ValueError("geometry not established")
    return DicomProvenance(
        source=SeriesSource(cand.series_uid, cand.series_number, cand.label, cand.description, cand.modality,
                            cand.n_images, dict(cand.split), tuple(syntaxes)),
        scan=ScanSummary(scan.n_files, dict(scan.skipped_counts),
                         tuple(c.label for c in scan.candidates if c is not cand)),
        decisions=(
            "slices sorted by position along the slice normal (not InstanceNumber or file name)",
            f"slice normal (LPS) {[round(float(v), 6) for v in geom.normal]}",
            "affine from ImageOrientationPatient, ImagePositionPatient and PixelSpacing; converted LPS to RAS+",
            *geom.notes,
            *candidate_notes(cand),
        ),
        checks=_checks(geom, cand),
        repairs=tuple(repairs),
        values=ValueSummary(values.rescale, values.masked_voxels, value_range[0], value_range[1]),
        warnings=tuple(warnings),
        geometry=Grid((i, j, k), affine),
    )


def read_dicom_volume(
    folder: str | Path,
    options: DicomOptions | None = None,
) -> DicomVolume:
    """Read one volume from a DICOM folder (searched recursively).

    ``options.series`` picks a volume when the folder holds several (the error lists them). Gantry tilt and uneven
    or missing slices are refused unless ``options.allow_tilt`` / ``allow_uneven`` opt into resampling (recorded
    in ``provenance.repairs``); see :class:`DicomOptions`.
    """
    scan = scan_folder(folder)
    options = options or DicomOptions()
    cand = select_candidate(scan, options.series)
    return load_candidate(scan, cand, options)
