"""What derived DICOM objects (SEG, RTSTRUCT) are built from: the source series' headers and its geometry, both in
highdicom's terms, and a mask arranged on that geometry by highdicom (never by hand-written transposes).

The source geometry comes from highdicom's own reading of the headers (``get_series_volume_positions`` and
``VolumeGeometry``), independently of medpipe's reader; a mask on medpipe's grid (I, J, K) with a RAS+ affine
becomes a :class:`highdicom.Volume` and is matched to that geometry (axes permuted/flipped by highdicom). Where the
two readers disagree by more than :data:`GRID_TOL_MM`, nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from medpipe.errors import DicomError, GeometryError
from medpipe.io.geometry import Grid

if TYPE_CHECKING:
    import highdicom as hd

#: Largest difference (mm, any affine entry) between medpipe's grid and highdicom's reading of the source series.
GRID_TOL_MM = 1e-3

#: Type 2 attributes highdicom and rt-utils copy from the source; absent ones are written empty.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                 "StudyDate", "StudyTime", "ReferringPhysicianName")


@dataclass(frozen=True, eq=False)
class SourceSeries:
    """The source images (headers only, no pixel data) in highdicom's slice order, and their geometry.

    ``geometry`` is None where highdicom sees no regular volume (uneven or tilted stacks, repaired by medpipe).
    ``notes``: what had to be filled in (missing UIDs), for the sidecar; never patient data. ``derived_uids``: the
    keywords of the identifying UIDs the source lacked and medpipe derived (StudyInstanceUID, ...).
    """

    datasets: tuple[Dataset, ...]
    geometry: hd.VolumeGeometry | None
    notes: tuple[str, ...] = ()
    derived_uids: tuple[str, ...] = ()

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.datasets[0].FrameOfReferenceUID)


def _read_header(path: Path) -> Dataset:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        raise DicomError(f"cannot re-read source image header ({type(err).__name__})", path=path.name) from err


def _fill_identity(datasets: list[Dataset]) -> tuple[list[str], list[str]]:
    """Fill what anonymisers blank out and derived objects need. Returns notes (no values, no patient data) and
    the keywords of the UIDs that were derived."""
    from pydicom.uid import generate_uid

    notes: list[str] = []
    derived: list[str] = []
    blank_sop = 0
    for ds in datasets:
        meta = getattr(ds, "file_meta", None)
        if not ds.get("SOPInstanceUID") and meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            blank_sop += 1
        if not ds.get("SOPClassUID") and meta is not None and meta.get("MediaStorageSOPClassUID"):
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    if blank_sop:
        notes.append(f"SOPInstanceUID blank in {blank_sop} source images: taken from their file meta information")
    if any(not ds.get("SOPInstanceUID") for ds in datasets):
        raise DicomError("source images have no SOPInstanceUID, so a derived object cannot reference them")
    entropy = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    for keyword, what in (("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series"),
                          ("FrameOfReferenceUID", "frame of reference")):
        if any(not ds.get(keyword) for ds in datasets):
            uid = generate_uid(entropy_srcs=[keyword, *entropy])
            for ds in datasets:
                if not ds.get(keyword):
                    setattr(ds, keyword, uid)
            derived.append(keyword)
            notes.append(f"source images have no {keyword}: a stable one was derived from their SOP instance UIDs, "
                         f"so the output is not linked to the source {what} in a PACS")
    return notes, derived


def read_source(files: Sequence[Path]) -> SourceSeries:
    """Re-read the headers of a series' files (slice order as given) and establish highdicom's geometry."""
    import highdicom as hd
    from highdicom.spatial import get_series_volume_positions

    if not files:
        raise DicomError("no source images: DICOM outputs need a DICOM input series")
    datasets = [_read_header(Path(f)) for f in files]
    notes, derived = _fill_identity(datasets)
    first = datasets[0]
    try:
        if len(datasets) == 1 and int(first.get("NumberOfFrames", 1)) > 1:
            image = hd.Image.from_dataset(first, copy=False)
            return SourceSeries((first,), image.get_volume_geometry(), tuple(notes), tuple(derived))
        spacing, positions = get_series_volume_positions(datasets)
    except (ValueError, AttributeError, KeyError, TypeError) as err:
        raise DicomError(f"highdicom cannot place the source images ({type(err).__name__}: {str(err)[:200]})",
                         path=Path(files[0]).name) from err
    if spacing is None or positions is None:
        return SourceSeries(tuple(datasets), None, tuple(notes), tuple(derived))
    ordered = [datasets[positions.index(i)] for i in range(len(datasets))]
    start = ordered[0]
    geometry = hd.VolumeGeometry.from_attributes(
        image_position=start.ImagePositionPatient, image_orientation=start.ImageOrientationPatient,
        rows=int(start.Rows), columns=int(start.Columns), pixel_spacing=start.PixelSpacing,
        spacing_between_slices=spacing, number_of_frames=len(ordered), coordinate_system="PATIENT",
        frame_of_reference_uid=start.FrameOfReferenceUID,
    )
    return SourceSeries(tuple(ordered), geometry, tuple(notes), tuple(derived))


def _orientation_reference(source: SourceSeries) -> hd.VolumeGeometry:
    """A geometry with the source's orientation (positions irrelevant): what a repaired grid is arranged like."""
    import highdicom as hd

    if source.geometry is not None:
        return source.geometry
    first = source.datasets[0]
    return hd.VolumeGeometry.from_attributes(
        image_position=first.ImagePositionPatient, image_orientation=first.ImageOrientationPatient,
        rows=int(first.Rows), columns=int(first.Columns), pixel_spacing=first.PixelSpacing,
        spacing_between_slices=1.0, number_of_frames=1, coordinate_system="PATIENT",
    )


def mask_volume(labels: np.ndarray, grid: Grid, source: SourceSeries, *, repaired: bool = False) -> hd.Volume:
    """The mask ``labels`` (I, J, K) on ``grid`` (RAS+) as a :class:`highdicom.Volume` arranged like the source:
    axis 0 = slices, 1 = rows, 2 = columns.

    On an unrepaired grid the result must equal the source geometry (within :data:`GRID_TOL_MM`), else a
    :class:`GeometryError`. On a ``repaired`` grid it keeps its own positions, axes ordered like the source's.
    """
    import highdicom as hd

    if labels.shape != grid.shape:
        raise GeometryError(f"mask shape {labels.shape} differs from its grid {grid.shape}")
    volume = hd.Volume(array=labels, affine=np.asarray(grid.affine, dtype=float), coordinate_system="PATIENT",
                       frame_of_reference_uid=source.frame_of_reference_uid, from_reference_convention="RAS")
    if repaired:
        return _contiguous(volume.match_orientation(_orientation_reference(source)))
    if source.geometry is None:
        raise GeometryError("the source series is not a regular volume for highdicom (uneven or tilted slices) "
                            "although no repair was applied")
    matched = volume.match_orientation(source.geometry)
    if not matched.geometry_equal(source.geometry, tol=GRID_TOL_MM):
        raise GeometryError(
            f"the mask grid ({grid.shape}) is not the source series grid as highdicom reads it "
            f"({source.geometry.spatial_shape} slices x rows x columns); nothing written")
    return _contiguous(matched)


def _contiguous(volume: hd.Volume) -> hd.Volume:
    """The same volume with its array in C order: frames (axis 0) become contiguous planes, which makes
    highdicom's per-frame work on a permuted view about 20x faster."""
    return volume.with_array(np.ascontiguousarray(volume.array))
