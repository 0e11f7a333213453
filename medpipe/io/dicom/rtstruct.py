"""RTSTRUCT output with rt-utils (optional extra ``medpipe[rt]``), placed by highdicom's geometry.

rt-utils builds the RT Structure Set (study, patient and frame-of-reference references, ROI sequences, contour
image references) and finds each slice's contours (OpenCV). The contour points are mapped from pixel indices to
patient coordinates with the affine of the mask's highdicom volume (:mod:`medpipe.io.dicom.derived`), not with
rt-utils' own transform, which swaps the two PixelSpacing values (wrong for non-square pixels) and assumes
square images. Any orientation works (axial, coronal, sagittal, oblique); each contour references the source
image it lies on. Repaired (resampled) grids are refused: contours must lie on source image planes.

Holes inside a structure are written as further closed contours on the same slice (read with the even-odd rule
by RT planning systems and 3D Slicer).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import OutputError
from medpipe.io.atomic import atomic_path
from medpipe.io.dicom.derived import SourceSeries, mask_volume, read_source
from medpipe.io.dicom.seg import LIBRARY_ERRORS, SERIES_NUMBER_OFFSET, Algorithm, DicomOutput
from medpipe.io.geometry import Grid
from medpipe.labels import LabelInfo, parse_code
from medpipe.runtime import __version__

#: RTROIInterpretedType by segment category (pydicom SNOMED CT keyword): anatomical structures are organs.
_INTERPRETED = {"AnatomicalStructure": "ORGAN"}


def _rt_utils() -> tuple[Any, Any, Any]:
    try:
        from rt_utils import ds_helper, image_helper
        from rt_utils.utils import ROIData
    except ImportError as err:
        raise OutputError("--format rtstruct needs the optional package rt-utils, which is not installed",
                          hint="pip install 'medpipe[rt]'") from err
    return ds_helper, image_helper, ROIData


def _contours_lps(plane: np.ndarray, k: int, affine_lps: np.ndarray, image_helper: Any) -> list[list[float]]:
    """Closed contours of one binary plane (rows, columns) as flat LPS point lists [x0, y0, z0, x1, ...] (mm)."""
    contours, _ = image_helper.find_mask_contours(plane, approximate_contours=True)
    out = []
    for contour in contours:
        cols_rows = np.asarray(contour, dtype=float).reshape(-1, 2)  # OpenCV points are (x = column, y = row)
        index = np.column_stack([np.full(len(cols_rows), float(k)), cols_rows[:, 1], cols_rows[:, 0],
                                 np.ones(len(cols_rows))])
        world = (affine_lps @ index.T)[:3].T
        out.append([round(float(v), 4) for v in world.ravel()])
    return out


def build_rtstruct(labels: np.ndarray, grid: Grid, source: SourceSeries, table: Sequence[LabelInfo],
                   algorithm: Algorithm) -> Any:
    """The RTSTRUCT data set of ``labels`` (I, J, K on ``grid``): one ROI per label of ``table`` (empty ones too)."""
    ds_helper, image_helper, roi_data_cls = _rt_utils()
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import generate_uid

    volume = mask_volume(labels, grid, source, repaired=False)
    series = list(source.datasets)  # highdicom's slice order = the volume's axis 0
    pydicom_log = logging.getLogger("pydicom")
    was_disabled = pydicom_log.disabled
    # rt-utils sets FileDataset.is_implicit_VR, which pydicom 3 deprecates with a warning and a log line
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pydicom_log.disabled = True
        try:
            ds = ds_helper.create_rtstruct_dataset(series)
        finally:
            pydicom_log.disabled = was_disabled
    ds.Manufacturer = "medpipe"
    ds.ManufacturerModelName = algorithm.model_name[:64] or "medpipe"
    ds.SoftwareVersions = f"medpipe {__version__}"
    ds.DeviceSerialNumber = algorithm.model_sha256[:16]
    del ds.InstitutionName  # rt-utils writes its own lab's name here
    ds.SeriesInstanceUID = generate_uid()
    number = series[0].get("SeriesNumber")
    ds.SeriesNumber = SERIES_NUMBER_OFFSET + 1 + (int(number) if number not in (None, "") else 0)
    ds.SeriesDescription = f"medpipe {algorithm.model_name}"[:64]
    ds.StructureSetLabel = "medpipe"
    ds.StructureSetDescription = (f"medpipe {algorithm.version}; model {algorithm.model_name} "
                                  f"sha256 {algorithm.model_sha256}")[:1024]
    ds.OperatorsName = ""
    for keyword in ("ReferringPhysicianName", "AccessionNumber", "PositionReferenceIndicator"):
        setattr(ds, keyword, series[0].get(keyword, ""))
    ds.FrameOfReferenceUID = source.frame_of_reference_uid
    for n, info in enumerate(table, start=1):
        binary = volume.array == info.value
        roi = roi_data_cls(binary, list(info.color), n, info.name[:64], source.frame_of_reference_uid,
                           description=f"{info.type.meaning} ({info.type.scheme} {info.type.value})"[:64],
                           roi_generation_algorithm="AUTOMATIC")
        contour_items = DicomSequence()
        for k, image in enumerate(series):
            if binary[k].any():
                for points in _contours_lps(binary[k], k, volume.affine, image_helper):
                    contour_items.append(ds_helper.create_contour(image, points))
        ds.ROIContourSequence.append(_roi_contour(roi, contour_items))
        ds.StructureSetROISequence.append(ds_helper.create_structure_set_roi(roi))
        observation = ds_helper.create_rtroi_observation(roi)
        observation.ROIObservationDescription = f"medpipe {algorithm.model_name}"[:64]
        observation.RTROIInterpretedType = next(
            (kind for keyword, kind in _INTERPRETED.items() if parse_code(keyword) == info.category), "")
        ds.RTROIObservationsSequence.append(observation)
    return ds


def _roi_contour(roi: Any, contours: Any) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ROIDisplayColor = list(roi.color)
    if len(contours):
        item.ContourSequence = contours
    item.ReferencedROINumber = roi.number
    return item


def write_rtstruct(path: str | Path, labels: np.ndarray, grid: Grid, source_files: Sequence[Path],
                   table: Sequence[LabelInfo], algorithm: Algorithm) -> DicomOutput:
    """Write an RTSTRUCT of ``labels`` (I, J, K on ``grid``, the source series grid) for ``source_files``."""
    path = Path(path)
    _rt_utils()
    source = read_source(source_files)
    try:
        ds = build_rtstruct(labels, grid, source, table, algorithm)
    except LIBRARY_ERRORS as err:
        raise OutputError(f"rt-utils could not build the RTSTRUCT ({type(err).__name__}: {str(err)[:200]})",
                          path=path.name) from err
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    n_contours = sum(len(item.get("ContourSequence", [])) for item in ds.ROIContourSequence)
    return DicomOutput(file=path.name, kind="rtstruct", series_uid=str(ds.SeriesInstanceUID),
                       sop_instance_uid=str(ds.SOPInstanceUID),
                       segments={n: info.name for n, info in enumerate(table, start=1)}, grid="source",
                       notes=source.notes, extra={"contours": n_contours,
                                                  "roi_label_values": {str(n): info.value
                                                                       for n, info in enumerate(table, start=1)}})
