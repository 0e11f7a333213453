"""``medpipe convert``: every volume of a DICOM folder to NIfTI, each with a JSON sidecar.

File names come from the series label (SeriesNumber, plus a suffix when one series holds several volumes)
and SeriesDescription, never from patient data or folder names. The sidecar records the source series UID,
geometry decisions, checks and repairs. Every file is written atomically and its grid is re-read and checked
against the volume's before it is renamed into place (the geometry contract).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np

from medpipe.errors import DicomError
from medpipe.io.atomic import atomic_path, ensure_writable_dir, write_json_atomic
from medpipe.io.dicom.naming import output_stem
from medpipe.io.dicom.options import DicomOptions
from medpipe.io.dicom.scan import scan_folder, select_candidate
from medpipe.io.dicom.volume import DicomVolume, load_candidate
from medpipe.io.geometry import check_on_grid, grid_of, require_same_grid
from medpipe.io.nifti import nifti_image
from medpipe.runtime import __version__


@dataclass(frozen=True)
class ConvertedVolume:
    """One written volume: its NIfTI and sidecar paths and what it holds."""

    label: str
    description: str
    nifti: Path
    sidecar: Path
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: str
    dtype: str
    repairs: tuple[str, ...] = ()


@dataclass(frozen=True)
class FailedVolume:
    """A volume that could not be converted, and why (the batch goes on without it)."""

    label: str
    description: str
    message: str


@dataclass(frozen=True)
class ConvertResult:
    """Outcome of :func:`convert_dicom`: written volumes, failed volumes, skipped files by reason."""

    out_dir: Path
    written: tuple[ConvertedVolume, ...]
    failed: tuple[FailedVolume, ...] = ()
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every volume found was converted."""
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (paths as strings)."""
        return {
            "out_dir": str(self.out_dir),
            "written": [
                {
                    "label": v.label,
                    "description": v.description,
                    "nifti": str(v.nifti),
                    "sidecar": str(v.sidecar),
                    "shape": list(v.shape),
                    "spacing_mm": [round(s, 6) for s in v.spacing_mm],
                    "orientation": v.orientation,
                    "dtype": v.dtype,
                    "repairs": list(v.repairs),
                }
                for v in self.written
            ],
            "failed": [{"label": f.label, "description": f.description, "error": f.message} for f in self.failed],
            "skipped_files": self.skipped,
        }


def _storage(volume: DicomVolume) -> tuple[np.ndarray, str]:
    """The array to write: int16/uint16/int32 when every value is an integer that fits, else the float array as
    read (float32, or float64 for stored values wider than 24 bits, which float32 would round)."""
    data = volume.array
    if volume.integer_valued and data.size:
        lo, hi = volume.provenance.values.minimum, volume.provenance.values.maximum
        for dtype in (np.int16, np.uint16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return data.astype(dtype), np.dtype(dtype).name
    return data, data.dtype.name


def write_volume(volume: DicomVolume, nifti_path: Path) -> str:
    """Write ``volume`` as NIfTI (qform = sform = its affine, code 1) and check the written grid. Returns dtype."""
    data, dtype = _storage(volume)
    img = nifti_image(data, volume.affine, "medpipe convert")
    with atomic_path(nifti_path) as tmp:
        nib.save(img, str(tmp))
        if dtype.startswith("float"):
            written = cast(nib.Nifti1Image, nib.load(str(tmp)))
            require_same_grid(grid_of(written), volume.grid, nifti_path, what="written volume grid")
        else:
            check_on_grid(tmp, volume.grid, shown_path=nifti_path)
    return dtype


def _sidecar(volume: DicomVolume, dtype: str, nifti_name: str) -> dict[str, Any]:
    return {
        "converter": f"medpipe {__version__}",
        "nifti": nifti_name,
        "stored_dtype": dtype,
        **volume.provenance.to_json(),
    }


def convert_dicom(
    folder: str | Path,
    out_dir: str | Path,
    options: DicomOptions | None = None,
    *,
    compress: bool = True,
) -> ConvertResult:
    """Convert the volumes of a DICOM folder to NIfTI (``.nii.gz``, or ``.nii`` when ``compress`` is False).

    With ``options.series`` (SeriesNumber, label or SeriesInstanceUID) only that volume is converted and any problem
    raises :class:`DicomError`. Without it every volume is converted; one that fails its checks is listed in
    ``failed`` and the others are still written. Raises when nothing could be converted.
    """
    folder = Path(folder)
    out = ensure_writable_dir(out_dir)
    options = options or DicomOptions()
    scan = scan_folder(folder)
    one = options.series is not None or len(scan.candidates) <= 1
    cands = [select_candidate(scan, options.series)] if one else scan.candidates
    written: list[ConvertedVolume] = []
    failed: list[FailedVolume] = []
    suffix = ".nii.gz" if compress else ".nii"
    for cand in cands:
        try:
            volume = load_candidate(scan, cand, options)
        except DicomError as err:
            if len(cands) == 1:
                raise
            failed.append(FailedVolume(cand.label, cand.description, err.message))
            continue
        stem = output_stem(cand.label, cand.description)
        nifti_path, sidecar_path = out / f"{stem}{suffix}", out / f"{stem}.json"
        dtype = write_volume(volume, nifti_path)
        write_json_atomic(sidecar_path, _sidecar(volume, dtype, nifti_path.name))
        grid = volume.grid
        written.append(
            ConvertedVolume(
                cand.label,
                cand.description,
                nifti_path,
                sidecar_path,
                grid.shape,
                grid.spacing_mm,
                grid.orientation,
                dtype,
                tuple(r.kind for r in volume.provenance.repairs),
            )
        )
    if not written:
        reasons = "; ".join(
            f.message if f.message.startswith(f"series {f.label}") else f"series {f.label}: {f.message}" for f in failed
        )
        raise DicomError(f"no volume could be converted: {reasons}", path=folder)
    return ConvertResult(out, tuple(written), tuple(failed), scan.skipped_counts)
