"""Scan a folder (recursively) and group its DICOM images into volume candidates.

Grouping: by SeriesInstanceUID, then by geometry (Rows/Columns, ImageOrientationPatient and PixelSpacing
within tolerance), then by echo and temporal position, and by AcquisitionNumber only where that resolves
images at duplicate positions. Slices are never ordered here (see :mod:`.geometry`). Nothing in a scan
result names patients or folders: files are shown by their base name.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medpipe.errors import DicomError
from medpipe.io.dicom.headers import Frame, Skipped, read_header, sniff_dicom
from medpipe.io.dicom.orientation import plane_name

#: Two orientations (direction cosines) or pixel spacings closer than this are the same geometry.
IOP_TOL = 1e-3
SPACING_TOL_MM = 1e-3
#: Two slices whose positions along the normal differ by less than this are at the same position.
DUPLICATE_TOL_MM = 1e-2


@dataclass(frozen=True)
class VolumeCandidate:
    """Images that may form one volume. ``label`` is how a user picks it (``--series LABEL``)."""

    label: str
    series_uid: str
    series_number: int | None
    description: str
    modality: str
    frames: tuple[Frame, ...]
    split: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def n_images(self) -> int:
        """Number of 2D images (slices)."""
        return len(self.frames)

    @property
    def shown(self) -> str:
        """How messages name this candidate: ``series 3 'T1 sag'``."""
        desc = f" '{self.description}'" if self.description else ""
        return f"series {self.label}{desc}"


@dataclass(frozen=True)
class ScanResult:
    """What a folder holds: volume candidates and skipped files by reason (counts and base names)."""

    folder: Path
    n_files: int
    candidates: tuple[VolumeCandidate, ...]
    skipped: dict[str, list[str]]

    @property
    def skipped_counts(self) -> dict[str, int]:
        """Number of skipped files per reason."""
        return {reason: len(names) for reason, names in sorted(self.skipped.items())}

    def describe_skipped(self) -> str:
        """``3 not DICOM, 1 structured report (SR)`` (empty when nothing was skipped)."""
        return ", ".join(f"{n} {reason}" for reason, n in self.skipped_counts.items())


def _walk(folder: Path) -> Iterable[Path]:
    """Files under ``folder`` in a deterministic order; symlinked folders are not followed."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            yield Path(root) / name


def is_dicom_folder(path: str | Path, *, max_files: int = 256) -> bool:
    """True for a folder holding at least one DICOM file (``DICM`` at byte 128, or a raw DICOM data set).

    Cheap: looks at no more than ``max_files`` files and reads 132 bytes of each.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    for i, file in enumerate(_walk(path)):
        if i >= max_files:
            return False
        if file.is_file() and sniff_dicom(file):
            return True
    return False


def _check_folder(folder: Path) -> None:
    if not folder.exists():
        raise DicomError("folder not found", path=folder)
    if not folder.is_dir():
        raise DicomError("is not a folder, expected a folder of DICOM files", path=folder)
    if not os.access(folder, os.R_OK | os.X_OK):
        raise DicomError("folder is not readable", path=folder, hint="check its permissions")


def scan_folder(folder: str | Path) -> ScanResult:
    """Read every file's header under ``folder`` and group the images into volume candidates."""
    folder = Path(folder)
    _check_folder(folder)
    frames: list[Frame] = []
    skipped: dict[str, list[str]] = {}
    n_files = 0
    for file in _walk(folder):
        n_files += 1
        result = read_header(file, file.name)
        if isinstance(result, Skipped):
            skipped.setdefault(result.reason, []).append(result.name)
        else:
            frames.extend(result)
    return ScanResult(folder, n_files, tuple(group_frames(frames)), skipped)


def _cluster(frames: list[Frame], key: Callable[[Frame], tuple[float, ...] | None], tol: float) -> list[list[Frame]]:
    """Greedy clustering of frames by a numeric key within ``tol``; frames without the key join the largest."""
    clusters: list[tuple[np.ndarray, list[Frame]]] = []
    missing: list[Frame] = []
    for frame in frames:
        value = key(frame)
        if value is None:
            missing.append(frame)
            continue
        vec = np.asarray(value)
        for ref, members in clusters:
            if float(np.max(np.abs(ref - vec))) <= tol:
                members.append(frame)
                break
        else:
            clusters.append((vec, [frame]))
    groups = [members for _, members in clusters]
    if missing:
        if groups:
            max(groups, key=len).extend(missing)
        else:
            groups.append(missing)
    return groups


def _normal_positions(frames: list[Frame]) -> np.ndarray | None:
    if any(f.ipp is None or f.iop is None for f in frames):
        return None
    iop = np.asarray(frames[0].iop)
    normal = np.cross(iop[:3], iop[3:])
    return np.asarray([f.ipp for f in frames]) @ normal


def _has_duplicates(frames: list[Frame]) -> bool:
    pos = _normal_positions(frames)
    if pos is None or len(pos) < 2:
        return False
    return bool(np.min(np.diff(np.sort(pos))) < DUPLICATE_TOL_MM)


def _split_by(frames: list[Frame], attr: str) -> dict[str, list[Frame]]:
    parts: dict[str, list[Frame]] = {}
    for frame in frames:
        parts.setdefault(str(getattr(frame, attr)), []).append(frame)
    return parts


def _split_volume(frames: list[Frame]) -> list[tuple[dict[str, str], list[Frame]]]:
    """Split by echo and temporal position; by AcquisitionNumber only where it resolves duplicate positions."""
    groups: list[tuple[dict[str, str], list[Frame]]] = [({}, frames)]
    for attr in ("echo", "temporal"):
        refined: list[tuple[dict[str, str], list[Frame]]] = []
        for split, members in groups:
            parts = _split_by(members, attr)
            if len(parts) > 1:
                refined.extend(({**split, attr: value}, part) for value, part in sorted(parts.items()))
            else:
                refined.append((split, members))
        groups = refined
    final: list[tuple[dict[str, str], list[Frame]]] = []
    for split, members in groups:
        parts = _split_by(members, "acquisition")
        resolves = len(parts) > 1 and all(len(p) > 1 and not _has_duplicates(p) for p in parts.values())
        if _has_duplicates(members) and resolves:
            final.extend(({**split, "acquisition": value}, part) for value, part in sorted(parts.items()))
        else:
            final.append((split, members))
    return final


def group_frames(frames: list[Frame]) -> list[VolumeCandidate]:
    """Group frames into labelled volume candidates (deterministic order)."""
    by_series: dict[str, list[Frame]] = {}
    for frame in frames:
        by_series.setdefault(frame.series_uid, []).append(frame)
    raw: list[tuple[str, dict[str, str], list[Frame], int, str]] = []
    for uid, members in by_series.items():
        geometry_groups: list[list[Frame]] = []
        for shape_group in _split_by_shape(members):
            for iop_group in _cluster(shape_group, lambda f: f.iop, IOP_TOL):
                geometry_groups.extend(_cluster(iop_group, lambda f: f.pixel_spacing, SPACING_TOL_MM))
        main = max(geometry_groups, key=len)
        for group in geometry_groups:
            # the first file (by name) that differs from the series' main geometry, for the message
            odd = "" if group is main else min(Path(f.path).name for f in group)
            for split, part in _split_volume(group):
                raw.append((uid, split, part, len(geometry_groups), odd))
    raw.sort(key=lambda r: (r[2][0].series_number or 0, -len(r[2]), sorted(r[1].items()), r[0]))
    per_number = Counter(r[2][0].series_number or 0 for r in raw)
    seen: Counter[int] = Counter()
    candidates = []
    for uid, split, part, n_geometries, odd in raw:
        number = part[0].series_number or 0
        seen[number] += 1
        label = str(number) if per_number[number] == 1 else f"{number}-{seen[number]}"
        notes: tuple[str, ...] = ()
        if n_geometries > 1:
            notes = (f"series holds images of {n_geometries} geometries (mixed orientations or image sizes)"
                     + (f"; first file that differs from the rest: {odd}" if odd else ""),)
        first = part[0]
        candidates.append(
            VolumeCandidate(
                label, uid, first.series_number, first.description, first.modality, tuple(part), split, notes
            )
        )
    return candidates


def _split_by_shape(frames: list[Frame]) -> list[list[Frame]]:
    parts: dict[tuple[int, int], list[Frame]] = {}
    for frame in frames:
        parts.setdefault((frame.rows, frame.columns), []).append(frame)
    return sorted(parts.values(), key=len, reverse=True)


def select_candidate(scan: ScanResult, series: int | str | None) -> VolumeCandidate:
    """The one candidate the caller asked for; a :class:`DicomError` listing the choices otherwise."""
    cands = scan.candidates
    if not cands:
        found = scan.describe_skipped() or "no files"
        raise DicomError(f"no CT/MR/PET image series found ({scan.n_files} files: {found})", path=scan.folder)
    if series is None:
        if len(cands) == 1:
            return cands[0]
        raise DicomError(
            f"folder holds {len(cands)} volumes: {list_candidates(cands)}",
            path=scan.folder,
            hint="pick one with --series N (a label from this list), or convert them all with medpipe convert",
        )
    key = str(series).strip()
    matches = [c for c in cands if key in (c.label, c.series_uid)]
    if not matches and key.lstrip("-").isdigit():
        matches = [c for c in cands if (c.series_number or 0) == int(key)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise DicomError(
            f"series {key} holds {len(matches)} volumes: {list_candidates(matches)}",
            path=scan.folder,
            hint=f"pick one with --series {matches[0].label}",
        )
    raise DicomError(f"no series {key}; the folder holds: {list_candidates(cands)}", path=scan.folder)


def list_candidates(cands: Iterable[VolumeCandidate]) -> str:
    """One line per candidate: label, description, image count, plane, split and notes."""
    parts = []
    for c in cands:
        extra = [f"{k} {v}" for k, v in c.split.items()] + list(c.notes)
        tail = f"; {'; '.join(extra)}" if extra else ""
        parts.append(
            f"[{c.shown}: {c.modality or '?'}, {c.n_images} images {c.frames[0].columns}x{c.frames[0].rows}, "
            f"{plane_name(c.frames[0].iop)}{tail}]"
        )
    return ", ".join(parts)
