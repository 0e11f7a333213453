"""DICOM series in, geometry you can trust.

:func:`read_dicom_volume` scans a folder, groups images into volumes (series UID and geometry, echo,
temporal position, acquisition), sorts slices along the normal, checks the geometry (refusing tilt, gaps,
uneven spacing, duplicates, missing tags, too few slices unless a repair is opted into), decodes pixels and
applies the modality LUT. See docs/dicom.md.
"""

from __future__ import annotations

from medpipe.io.dicom.geometry import Problem, StackGeometry, analyse
from medpipe.io.dicom.headers import Frame
from medpipe.io.dicom.orientation import plane_name
from medpipe.io.dicom.scan import ScanResult, VolumeCandidate, is_dicom_folder, scan_folder, select_candidate
from medpipe.io.dicom.volume import DicomVolume, load_candidate, read_dicom_volume

__all__ = [
    "DicomVolume",
    "Frame",
    "Problem",
    "ScanResult",
    "StackGeometry",
    "VolumeCandidate",
    "analyse",
    "is_dicom_folder",
    "load_candidate",
    "plane_name",
    "read_dicom_volume",
    "scan_folder",
    "select_candidate",
]
