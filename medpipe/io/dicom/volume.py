"""From a scanned candidate to a trusted volume: checks, pixels, opt-in repairs, affine and provenance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import DicomError
from medpipe.io.dicom import repair
from medpipe.io.dicom.geometry import StackGeometry, analyse, candidate_notes, lps_affine_to_ras
from medpipe.io.dicom.pixels import read_stack
from medpipe.io.dicom.scan import ScanResult, VolumeCandidate, scan_folder, select_candidate
from medpipe.io.geometry import Grid

_REPAIR_FLAGS = {"allow_tilt": "--allow-tilt", "allow_uneven": "--allow-uneven"}


@dataclass(frozen=True, eq=False)
class DicomVolume:
    """A DICOM volume in nibabel convention.

    ``array``: float32 (I, J, K) = (columns, rows, slices), modality LUT applied (HU for CT).
    ``affine``: 4x4, voxel index to RAS+ mm, so ``nib.Nifti1Image(array, affine)`` is correctly placed.
    ``provenance``: decisions, checks, repairs and skipped-file counts (JSON-able; no patient data, no paths).
    ``integer_valued``: every voxel is an integer (no repair interpolated, integer slope and intercept).
    ``source_files``: the files of the images, in slice order (each once; the basis of DICOM SEG/RTSTRUCT outputs).
    """

    array: np.ndarray
    affine: np.ndarray
    series_uid: str
    series_number: int | None
    description: str
    modality: str
    provenance: dict[str, Any]
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
    *,
    allow_tilt: bool = False,
    allow_uneven: bool = False,
    workers: int | None = None,
) -> DicomVolume:
    """Check, read and (where opted in) repair one candidate. Raises :class:`DicomError` naming the problems."""
    geom = analyse(cand)
    allowed = {"allow_tilt": allow_tilt, "allow_uneven": allow_uneven}
    error = refusal(cand, geom, scan.folder, allowed)
    if error is not None:
        raise error
    if (geom.row_cos is None or geom.col_cos is None or geom.normal is None or geom.ipp is None
            or geom.positions_mm is None or geom.spacing_mm is None):  # excluded by refusal() above
        raise ValueError("geometry not established after the checks")
    frames = [cand.frames[i] for i in geom.order]
    stack, values = read_stack(frames, scan.folder, workers=workers)
    codes = {p.code: p for p in geom.problems}
    repairs: list[dict[str, Any]] = []
    origin = geom.ipp[0]
    dx, dy, dz = geom.spacing_mm
    if "tilt" in codes:
        fixed = repair.detilt(stack, geom.ipp, geom.row_cos, geom.col_cos, (dx, dy), codes["tilt"].message)
        stack, origin = fixed.stack, fixed.origin_lps
        repairs.append({**fixed.record, "tilt_deg": round(geom.tilt_deg, 3)})
    spacing_problem = codes.get("uneven") or codes.get("missing_slices")
    if spacing_problem is not None:
        stack, dz, record = repair.equalise(stack, geom.positions_mm, spacing_problem.message)
        repairs.append(record)
    affine = lps_affine_to_ras(geom.row_cos, geom.col_cos, geom.normal, (dx, dy, dz), origin)
    vmin, vmax = float(stack.min()), float(stack.max())
    warnings = []
    if cand.modality == "CT" and vmin > -200:
        warnings.append(f"CT values do not look like HU (minimum {vmin:g}, expected air near -1000)")
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
    repairs: list[dict[str, Any]],
    warnings: list[str],
    value_range: tuple[float, float],
) -> dict[str, Any]:
    k, j, i = shape_kji
    syntaxes = sorted({f.fmt.syntax_name for f in cand.frames})
    if geom.normal is None:  # only established geometries reach the sidecar
        raise ValueError("geometry not established")
    return {
        "source": {
            "series_uid": cand.series_uid,
            "series_number": cand.series_number,
            "label": cand.label,
            "description": cand.description,
            "modality": cand.modality,
            "images": cand.n_images,
            "split_by": cand.split,
            "transfer_syntax": syntaxes,
        },
        "scan": {
            "files": scan.n_files,
            "skipped": scan.skipped_counts,
            "other_volumes": [c.label for c in scan.candidates if c is not cand],
        },
        "decisions": [
            "slices sorted by position along the slice normal (not InstanceNumber or file name)",
            f"slice normal (LPS) {[round(float(v), 6) for v in geom.normal]}",
            "affine from ImageOrientationPatient, ImagePositionPatient and PixelSpacing; converted LPS to RAS+",
            *geom.notes,
            *candidate_notes(cand),
        ],
        "checks": _checks(geom, cand),
        "repairs": repairs,
        "values": {
            "transform": values.rescale,
            "high_bits_masked_voxels": values.masked_voxels,
            "min": value_range[0],
            "max": value_range[1],
        },
        "warnings": warnings,
        "geometry": Grid((i, j, k), affine).to_json(),
    }


def read_dicom_volume(
    folder: str | Path,
    *,
    series: int | str | None = None,
    allow_tilt: bool = False,
    allow_uneven: bool = False,
    workers: int | None = None,
) -> DicomVolume:
    """Read one volume from a DICOM folder (searched recursively).

    ``series``: a SeriesNumber, a label from the folder's listing (``3`` or ``3-2``) or a SeriesInstanceUID;
    required when the folder holds several volumes (the error lists them). Gantry tilt and uneven or missing
    slices are refused unless ``allow_tilt`` / ``allow_uneven`` opt into resampling (recorded in
    ``provenance["repairs"]``). ``workers``: processes for decoding compressed series (None: automatic).
    """
    scan = scan_folder(folder)
    cand = select_candidate(scan, series)
    return load_candidate(scan, cand, allow_tilt=allow_tilt, allow_uneven=allow_uneven, workers=workers)
