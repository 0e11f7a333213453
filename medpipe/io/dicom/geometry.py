"""Slice order, affine and geometry checks for one volume candidate, from headers alone.

Slices are sorted by their position along the slice normal n = row x column direction cosines (never by
InstanceNumber or file name). The affine maps voxel (i, j, k) = (column, row, slice) to RAS+ millimetres:
DICOM gives LPS, so the first two rows of the LPS affine are negated. PatientPosition never enters it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medpipe.io.dicom.headers import Frame, executable_preamble
from medpipe.io.dicom.scan import DUPLICATE_TOL_MM, VolumeCandidate

#: LPS (DICOM patient coordinates) to RAS+ (nibabel/NIfTI world coordinates).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Direction cosines must be unit length and orthogonal within this.
IOP_UNIT_TOL = 1e-3
MIN_SLICES = 3


def gap_tolerance_mm(expected_mm: float) -> float:
    """A gap differing from the expected spacing by more than this is uneven (1 %, at least 0.01 mm)."""
    return max(0.01, 0.01 * abs(expected_mm))


def tilt_tolerance_mm(pixel_mm: float) -> float:
    """In-plane drift of slice positions above this is a tilt (a tenth of a pixel, at least 0.01 mm)."""
    return max(0.01, 0.1 * pixel_mm)


@dataclass(frozen=True)
class Problem:
    """A reason not to trust the volume. ``repair`` names the opt-in that fixes it (None: refuse)."""

    code: str
    message: str
    repair: str | None = None


@dataclass(frozen=True)
class StackGeometry:
    """A candidate's slice order and geometry. Vectors are DICOM LPS unit vectors; lengths in mm.

    ``order`` indexes ``candidate.frames`` in ascending position along ``normal``; ``positions_mm`` are
    those positions and ``ipp`` the sorted ImagePositionPatient rows (K, 3). ``spacing_mm`` is
    (column spacing along ``row_cos``, row spacing along ``col_cos``, mean slice spacing).
    """

    order: tuple[int, ...]
    row_cos: np.ndarray | None
    col_cos: np.ndarray | None
    normal: np.ndarray | None
    ipp: np.ndarray | None
    positions_mm: np.ndarray | None
    spacing_mm: tuple[float, float, float] | None
    tilt_deg: float
    problems: tuple[Problem, ...]
    notes: tuple[str, ...]

    @property
    def established(self) -> bool:
        """True when orientation, positions and spacing are known (an affine can be built)."""
        return self.normal is not None and self.spacing_mm is not None and self.ipp is not None

    def affine(self) -> np.ndarray:
        """Voxel (column, row, slice) to RAS+ mm for the plain (unrepaired) stack; slice step along the normal."""
        if (self.row_cos is None or self.col_cos is None or self.normal is None or self.spacing_mm is None
                or self.ipp is None):
            raise ValueError("geometry not established")
        return lps_affine_to_ras(self.row_cos, self.col_cos, self.normal, self.spacing_mm, self.ipp[0])


def lps_affine_to_ras(
    row_cos: np.ndarray,
    col_cos: np.ndarray,
    slice_dir: np.ndarray,
    spacing: tuple[float, float, float],
    origin: np.ndarray,
) -> np.ndarray:
    """RAS+ affine from LPS unit axes, spacing (i, j, k) in mm and the LPS origin of voxel (0, 0, 0)."""
    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing[0]
    lps[:3, 1] = col_cos * spacing[1]
    lps[:3, 2] = slice_dir * spacing[2]
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def mm(value: float) -> str:
    """A length for messages: up to 3 decimals, at least one (``10.0``, ``1.081``)."""
    text = f"{value:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _names(frames: list[Frame], limit: int = 3) -> str:
    names = [f.name if f.index is None else f"{f.name} frame {f.index + 1}" for f in frames]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _missing_problems(cand: VolumeCandidate) -> list[Problem]:
    problems = []
    n = cand.n_images
    for attr, tag in (
        ("ipp", "ImagePositionPatient"),
        ("iop", "ImageOrientationPatient"),
        ("pixel_spacing", "PixelSpacing"),
    ):
        missing = [f for f in cand.frames if getattr(f, attr) is None]
        if missing:
            problems.append(
                Problem(
                    "missing_geometry",
                    f"cannot establish geometry: {tag} missing or invalid in {len(missing)} of {n} images "
                    f"({_names(missing)})",
                )
            )
    return problems


def _pixel_problems(cand: VolumeCandidate) -> list[Problem]:
    by_issue: dict[str, list[Frame]] = {}
    for frame in cand.frames:
        for issue in frame.issues:
            by_issue.setdefault(issue, []).append(frame)
    return [
        Problem("pixels", f"{issue} in {len(fs)} of {cand.n_images} images ({_names(fs)})")
        for issue, fs in by_issue.items()
    ]


def _check_iop(iop: np.ndarray) -> Problem | None:
    row, col = iop[:3], iop[3:]
    nr, nc, dot = float(np.linalg.norm(row)), float(np.linalg.norm(col)), float(np.dot(row, col))
    if abs(nr - 1) > IOP_UNIT_TOL or abs(nc - 1) > IOP_UNIT_TOL or abs(dot) > IOP_UNIT_TOL:
        return Problem(
            "invalid_iop",
            f"invalid ImageOrientationPatient {[round(float(v), 6) for v in iop]}: direction cosines have "
            f"lengths {nr:.4g} and {nc:.4g} and dot product {dot:.3g}, expected unit length and orthogonal",
        )
    return None


def analyse(cand: VolumeCandidate) -> StackGeometry:
    """Sort the candidate's slices along the normal and run every geometry check (headers only)."""
    frames = list(cand.frames)
    problems = _pixel_problems(cand) + _missing_problems(cand)
    notes = list(cand.notes) + _instance_notes(frames)
    n = len(frames)
    if n < MIN_SLICES:
        problems.append(
            Problem("too_few", f"only {n} image{'s' if n != 1 else ''}, a volume needs at least {MIN_SLICES}")
        )
    if any(p.code == "missing_geometry" for p in problems):
        return StackGeometry(tuple(range(n)), None, None, None, None, None, None, 0.0, tuple(problems), tuple(notes))
    iop = np.asarray(frames[0].iop, dtype=float)
    bad_iop = _check_iop(iop)
    spacing_rc = frames[0].pixel_spacing
    if spacing_rc is None:  # excluded by the missing_geometry check above
        raise ValueError("PixelSpacing missing after the geometry check")
    if bad_iop is not None:
        problems.append(bad_iop)
    if min(spacing_rc) <= 0:
        problems.append(Problem("invalid_spacing", f"PixelSpacing {list(spacing_rc)} mm, expected positive values"))
    if bad_iop is not None or min(spacing_rc) <= 0:
        return StackGeometry(tuple(range(n)), None, None, None, None, None, None, 0.0, tuple(problems), tuple(notes))
    row = iop[:3] / np.linalg.norm(iop[:3])
    col = iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    ipp_all = np.asarray([f.ipp for f in frames], dtype=float)
    pos_all = ipp_all @ normal
    order = sorted(range(n), key=lambda i: (pos_all[i], frames[i].instance or 0, frames[i].name, frames[i].index or 0))
    ipp, pos = ipp_all[order], pos_all[order]
    sorted_frames = [frames[i] for i in order]
    notes += _order_notes(sorted_frames)
    dz = float((pos[-1] - pos[0]) / (n - 1)) if n > 1 else 0.0
    tilt = 0.0
    if n >= 2:
        dup = _duplicate_problem(sorted_frames, pos)
        if dup is not None:
            problems.append(dup)
        else:
            tilt_problem, tilt = _tilt_problem(sorted_frames, ipp, normal, min(spacing_rc))
            if tilt_problem is not None:
                problems.append(tilt_problem)
            elif frames[0].gantry_tilt_deg:
                notes.append(
                    f"GantryDetectorTilt is {frames[0].gantry_tilt_deg:g} deg but slice positions lie along the "
                    "normal (images already orthogonal): no correction needed"
                )
            if n >= MIN_SLICES:
                spacing_problem = _spacing_problem(pos)
                if spacing_problem is not None:
                    problems.append(spacing_problem)
    spacing = (float(spacing_rc[1]), float(spacing_rc[0]), abs(dz) if dz else 1.0)
    return StackGeometry(tuple(order), row, col, normal, ipp, pos, spacing, tilt, tuple(problems), tuple(notes))


def _duplicate_problem(frames: list[Frame], pos: np.ndarray) -> Problem | None:
    gaps = np.diff(pos)
    dup = np.flatnonzero(gaps < DUPLICATE_TOL_MM)
    if dup.size == 0:
        return None
    same_sop = [i for i in dup if frames[i].sop_uid and frames[i].sop_uid == frames[i + 1].sop_uid]
    groups: list[list[int]] = []
    for i in dup:
        if groups and groups[-1][-1] == i:
            groups[-1].append(int(i) + 1)
        else:
            groups.append([int(i), int(i) + 1])
    shown = "; ".join(f"{len(g)} images at {mm(pos[g[0]])} mm ({_names([frames[i] for i in g])})" for g in groups[:3])
    more = f"; and {len(groups) - 3} more positions" if len(groups) > 3 else ""
    copies = " (some are copies: same SOPInstanceUID)" if same_sop else ""
    return Problem(
        "duplicate",
        f"duplicate slice positions: {shown}{more}{copies}; several acquisitions, echoes or phases "
        "in one series that the echo/temporal/acquisition numbers do not separate",
    )


def _tilt_problem(
    frames: list[Frame], ipp: np.ndarray, normal: np.ndarray, pixel_mm: float
) -> tuple[Problem | None, float]:
    rel = ipp - ipp[0]
    along = rel @ normal
    inplane = rel - np.outer(along, normal)
    drift = np.linalg.norm(inplane, axis=1)
    extent = abs(float(along[-1]))
    angle = math.degrees(math.atan2(float(drift[-1]), extent)) if extent > 0 else 90.0
    if float(drift.max()) <= tilt_tolerance_mm(pixel_mm):
        return None, 0.0
    tag = frames[0].gantry_tilt_deg
    tag_text = f"GantryDetectorTilt {tag:g} deg" if tag is not None else "no GantryDetectorTilt tag"
    return (
        Problem(
            "tilt",
            f"gantry tilt of {angle:.1f} deg: slice positions are not along the slice normal (they drift "
            f"{float(drift[-1]):.2f} mm in-plane from first to last slice; {tag_text})",
            repair="allow_tilt",
        ),
        angle,
    )


def _spacing_problem(pos: np.ndarray) -> Problem | None:
    gaps = np.diff(pos)
    expected = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - expected) > gap_tolerance_mm(expected))
    if bad.size == 0:
        return None
    parts = [f"gap of {mm(gaps[i])} mm between slices {i + 1} and {i + 2}" for i in bad[:3]]
    more = f" and {bad.size - 3} more" if bad.size > 3 else ""
    multiples = gaps[bad] / expected
    missing = bool(np.all(multiples > 1.5) and np.all(np.abs(multiples - np.rint(multiples)) < 0.1))
    if missing:
        n_missing = int(np.sum(np.rint(multiples) - 1))
        what = f"missing slice{'s' if n_missing > 1 else ''} ({n_missing})"
        code = "missing_slices"
    else:
        what, code = "uneven slice spacing", "uneven"
    return Problem(
        code,
        f"{what}: {', '.join(parts)}{more}, expected {mm(expected)} mm ({bad.size} of {gaps.size} gaps differ)",
        repair="allow_uneven",
    )


def _instance_notes(frames: list[Frame]) -> list[str]:
    missing = sum(f.instance is None for f in frames)
    if missing:
        return [f"InstanceNumber missing in {missing} of {len(frames)} images (not needed: sorted by position)"]
    return []


def _order_notes(sorted_frames: list[Frame]) -> list[str]:
    numbers = [f.instance for f in sorted_frames if f.index is None]
    if len(numbers) < 2 or any(v is None for v in numbers):
        return []
    diffs = np.diff(np.asarray(numbers, dtype=float))
    if np.all(diffs > 0):
        return []
    if np.all(diffs < 0):
        return ["InstanceNumber decreases along the slice normal (ignored: sorted by position)"]
    return ["InstanceNumber order is not spatial (ignored: sorted by position)"]


def candidate_notes(cand: VolumeCandidate) -> list[str]:
    """Notes on intensities and patient position that do not stop a conversion (recorded in provenance)."""
    frames = cand.frames
    notes = []
    slopes = {f.slope for f in frames}
    inters = {f.intercept for f in frames}
    if len(slopes) > 1 or len(inters) > 1:
        notes.append("RescaleSlope/RescaleIntercept vary between slices (applied per slice)")
    if cand.modality == "CT" and None in inters:
        notes.append("CT without RescaleIntercept: stored values taken as HU; check they look like HU")
    positions = sorted({f.patient_position for f in frames if f.patient_position})
    if positions:
        notes.append(f"PatientPosition {'/'.join(positions)} recorded, not used: IOP/IPP are patient coordinates")
    if any(f.fmt.photometric == "MONOCHROME1" for f in frames):
        notes.append("MONOCHROME1: modality values kept as stored (inversion is for display only)")
    files = sorted({f.path for f in frames})
    flagged = sum(executable_preamble(Path(p)) for p in files)
    if flagged:  # counted, not named: file names stay out of provenance
        notes.append(f"{flagged} of {len(files)} files have a preamble that starts with an executable header (MZ, "
                     "CVE-2019-11687): never run or copied (outputs are new files); check where they came from")
    return notes
