"""``medpipe info PATH``: what a NIfTI file or a DICOM folder holds, from headers only (no pixel data).

For DICOM every volume candidate is listed with its geometry and the problems that would stop a
conversion (each saying whether an ``--allow-*`` repair exists); files that hold no image are counted by
reason. :func:`render_info` makes a rich table; :meth:`InfoResult.to_json` a JSON-able dict for scripts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib

from medpipe.errors import InputError
from medpipe.io.dicom.geometry import analyse, candidate_notes
from medpipe.io.dicom.orientation import plane_name
from medpipe.io.dicom.scan import VolumeCandidate, is_dicom_folder, scan_folder
from medpipe.io.nifti import inspect_nifti, is_nifti_path

_FLAGS = {"allow_tilt": "--allow-tilt", "allow_uneven": "--allow-uneven"}


@dataclass(frozen=True)
class VolumeInfo:
    """One volume: size (I, J, K) = (columns, rows, slices), spacing in mm, RAS orientation code."""

    label: str
    description: str
    modality: str
    size: tuple[int, int, int] | None
    spacing_mm: tuple[float, float, float] | None
    orientation: str | None
    plane: str
    n_slices: int
    storage: str
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    series_uid: str | None = None
    series_number: int | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "label": self.label,
            "series_number": self.series_number,
            "series_uid": self.series_uid,
            "description": self.description,
            "modality": self.modality,
            "size": list(self.size) if self.size else None,
            "spacing_mm": [round(s, 6) for s in self.spacing_mm] if self.spacing_mm else None,
            "orientation": self.orientation,
            "plane": self.plane,
            "slices": self.n_slices,
            "storage": self.storage,
            "problems": list(self.problems),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class InfoResult:
    """What ``path`` holds. ``kind`` is ``nifti`` or ``dicom``; ``skipped`` counts non-image files by reason."""

    path: Path
    kind: str
    volumes: tuple[VolumeInfo, ...]
    n_files: int = 1
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no volume has a problem."""
        return all(not v.problems for v in self.volumes)

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (for ``medpipe info --json``)."""
        return {
            "path": str(self.path),
            "kind": self.kind,
            "files": self.n_files,
            "skipped_files": self.skipped,
            "volumes": [v.to_json() for v in self.volumes],
        }


def _dicom_volume(cand: VolumeCandidate) -> VolumeInfo:
    geom = analyse(cand)
    first = cand.frames[0]
    size = (first.columns, first.rows, cand.n_images)
    orientation = None
    if geom.established:
        orientation = "".join(nib.aff2axcodes(geom.affine()))
    problems = tuple(p.message + (f" (repairable with {_FLAGS[p.repair]})" if p.repair else "") for p in geom.problems)
    return VolumeInfo(
        label=cand.label,
        description=cand.description,
        modality=cand.modality,
        size=size,
        spacing_mm=geom.spacing_mm,
        orientation=orientation,
        plane=plane_name(first.iop),
        n_slices=cand.n_images,
        storage=", ".join(sorted({f.fmt.syntax_name for f in cand.frames})),
        problems=problems,
        notes=tuple(geom.notes) + tuple(candidate_notes(cand)) + tuple(f"{k} {v}" for k, v in cand.split.items()),
        series_uid=cand.series_uid,
        series_number=cand.series_number,
    )


def _nifti_info(path: Path) -> InfoResult:
    try:
        meta = inspect_nifti(path, allow_4d=True)
    except InputError as err:
        vol = VolumeInfo("1", "", "", None, None, None, "", 0, "NIfTI", problems=(err.message,))
        return InfoResult(path, "nifti", (vol,))
    size = (meta.shape[0], meta.shape[1], meta.shape[2])
    spacing = (meta.spacing_mm[0], meta.spacing_mm[1], meta.spacing_mm[2])
    notes = ((f"{meta.n_channels} channels",) if meta.n_channels > 1 else ()) + (
        (meta.transform_note,) if meta.transform_note else (f"spatial transform: {meta.transform}",))
    vol = VolumeInfo("1", "", "", size, spacing, meta.orientation, "", size[2], f"NIfTI {meta.dtype}", notes=notes)
    return InfoResult(path, "nifti", (vol,))


def info(path: str | Path) -> InfoResult:
    """Describe a NIfTI file or a DICOM folder (recursively) without reading pixel data."""
    path = Path(path)
    if not path.exists():
        raise InputError("not found", path=path)
    if path.is_dir():
        scan = scan_folder(path)
        if not scan.candidates and not is_dicom_folder(path):
            found = scan.describe_skipped() or "no files"
            raise InputError(f"folder holds no DICOM file ({scan.n_files} files: {found})", path=path)
        vols = tuple(_dicom_volume(c) for c in scan.candidates)
        return InfoResult(path, "dicom", vols, scan.n_files, scan.skipped_counts)
    if is_nifti_path(path):
        return _nifti_info(path)
    raise InputError(
        "expected a NIfTI file (.nii/.nii.gz) or a folder of DICOM files",
        path=path,
        hint="for DICOM, pass the folder that holds the files",
    )
