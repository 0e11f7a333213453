"""Read one DICOM file's header (never its pixels) into :class:`Frame` records, or a reason to skip it.

A classic single-frame image gives one frame; an enhanced multi-frame image gives one frame per 2D image,
with geometry from the per-frame (or shared) functional groups. The byte offset of the Pixel Data value is
recorded, so that native values (and JPEG 2000 frames) are read later without a second parse. Each frame
carries the header pre-flight problems found for its file (``issues``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID

from medpipe.io.dicom.pixels import NATIVE_SYNTAXES, PixelFormat, pixel_issues

#: Errors pydicom raises on a malformed header; such a file is skipped (and counted), never fatal to a scan.
HEADER_ERRORS = (
    InvalidDicomError,
    BytesLengthException,
    RuntimeError,
    OSError,
    EOFError,
    ValueError,
    struct.error,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    NotImplementedError,
    OverflowError,
)

DEFLATED = dicom_uid.DeflatedExplicitVRLittleEndian

#: The only attributes parsed from each header (the scan's speed depends on it; nothing else is read).
HEADER_TAGS = [
    "SpecificCharacterSet",
    "ImageType",
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "SeriesDescription",
    "SliceThickness",
    "EchoNumbers",
    "GantryDetectorTilt",
    "PatientPosition",
    "SeriesInstanceUID",
    "SeriesNumber",
    "AcquisitionNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "TemporalPositionIdentifier",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "PixelSpacing",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "BurnedInAnnotation",
    "RescaleIntercept",
    "RescaleSlope",
    "ModalityLUTSequence",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
]

#: SOP classes that hold CT/MR/PET volumes.
VOLUME_SOP_CLASSES = {
    sop: sop.name.removesuffix(" Storage")
    for sop in (
        dicom_uid.CTImageStorage,
        dicom_uid.EnhancedCTImageStorage,
        dicom_uid.LegacyConvertedEnhancedCTImageStorage,
        dicom_uid.MRImageStorage,
        dicom_uid.EnhancedMRImageStorage,
        dicom_uid.LegacyConvertedEnhancedMRImageStorage,
        dicom_uid.PositronEmissionTomographyImageStorage,
        dicom_uid.LegacyConvertedEnhancedPETImageStorage,
        dicom_uid.EnhancedPETImageStorage,
    )
}

_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"}


@dataclass(frozen=True)
class Frame:
    """One 2D image of a file: its identity, geometry (DICOM LPS, mm) and pixel storage. No patient data."""

    path: Path
    name: str
    index: int | None
    sop_uid: str
    series_uid: str
    series_number: int | None
    description: str
    modality: str
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    iop: tuple[float, ...] | None
    ipp: tuple[float, float, float] | None
    echo: str | None
    temporal: str | None
    acquisition: str | None
    instance: int | None
    slope: float | None
    intercept: float | None
    has_lut_sequence: bool
    gantry_tilt_deg: float | None
    patient_position: str | None
    fmt: PixelFormat
    issues: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skipped:
    """A file that holds no usable image, with the reason (counted in scan results)."""

    name: str
    reason: str


def sniff_dicom(path: Path) -> bool:
    """Cheap test: ``DICM`` at byte 128, or a file that starts like a raw little-endian DICOM data set."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00") and head[3:4] == b"\x00"


def executable_preamble(path: Path) -> bool:
    """Whether the 128-byte preamble of a DICOM file starts with a Windows executable header (``MZ``): a
    DICOM/PE polyglot (CVE-2019-11687). medpipe never runs or copies a preamble; this only flags the file."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) >= 132 and head[128:132] == b"DICM" and head[:2] == b"MZ"


def _floats(ds: Dataset | None, keyword: str, n: int) -> tuple[float, ...] | None:
    if ds is None or keyword not in ds:
        return None
    try:
        value = ds[keyword].value
        values = [value] if n == 1 and not isinstance(value, list | tuple) else list(value)
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(v == v for v in out) else None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _text(ds: Dataset | None, keyword: str) -> str | None:
    if ds is None:
        return None
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _sop_class(ds: Dataset) -> str:
    uid = str(ds.get("SOPClassUID", "") or "")
    meta = getattr(ds, "file_meta", None)
    if not uid and meta is not None:
        uid = str(meta.get("MediaStorageSOPClassUID", "") or "")
    return uid


def skip_reason(ds: Dataset) -> str | None:
    """Why a parsed DICOM object is not part of any volume (None when it may be)."""
    sop = UID(_sop_class(ds))
    keyword = sop.keyword if sop else ""
    if sop == dicom_uid.MediaStorageDirectoryStorage:
        return "DICOMDIR"
    if keyword.endswith("SRStorage") or sop == dicom_uid.KeyObjectSelectionDocumentStorage:
        return "structured report (SR) or key object"
    if sop == dicom_uid.SegmentationStorage:
        return "segmentation (SEG)"
    if sop == dicom_uid.RTStructureSetStorage:
        return "RT structure set (RTSTRUCT)"
    if keyword.startswith("RT"):
        return "RT object (dose, plan, image)"
    if keyword.endswith("PresentationStateStorage"):
        return "presentation state"
    if "SecondaryCapture" in keyword:
        return "secondary capture"
    if not sop:
        return "no SOP class"
    if sop not in VOLUME_SOP_CLASSES:
        return f"not a CT/MR/PET image ({sop.name})"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return "localizer"
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "burned-in annotation"
    return None


def _pixel_element(fh: BinaryIO, ds: Dataset) -> tuple[str | None, int | None, int | None]:
    """At the file position where pydicom stopped: (pixel keyword, value offset, declared length)."""
    implicit, little = ds.original_encoding
    start = fh.tell()
    head = fh.read(12)
    if len(head) < 8:
        return None, None, None
    order = "<" if little else ">"
    group, elem = struct.unpack(order + "HH", head[:4])
    keyword = _PIXEL_TAGS.get(group << 16 | elem)
    if keyword is None:
        return None, None, None
    if implicit:
        (length,) = struct.unpack(order + "L", head[4:8])
        return keyword, start + 8, length
    if head[4:6] in _LONG_VRS and len(head) == 12:
        (length,) = struct.unpack(order + "L", head[8:12])
        return keyword, start + 12, length
    (length,) = struct.unpack(order + "H", head[6:8])
    return keyword, start + 8, length


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if uid:
        return uid
    implicit, little = ds.original_encoding
    if implicit:
        return str(dicom_uid.ImplicitVRLittleEndian)
    return str(dicom_uid.ExplicitVRLittleEndian if little else dicom_uid.ExplicitVRBigEndian)


def _functional(ds: Dataset, i: int, group: str) -> Dataset | None:
    """Item 0 of functional group ``group`` for frame ``i`` (per-frame first, then shared)."""
    for seq_name, index in (("PerFrameFunctionalGroupsSequence", i), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(seq_name)
        if seq is not None and len(seq) > index:
            inner = seq[index].get(group)
            if inner is not None and len(inner) > 0:
                return inner[0]
    return None


def read_header(path: Path, name: str) -> list[Frame] | Skipped:
    """Parse ``path`` (header only) into frames, or say why it is skipped. ``name`` is what errors show."""
    try:
        size = path.stat().st_size
    except OSError as err:
        return Skipped(name, f"unreadable ({err.strerror or err})")
    if size == 0:
        return Skipped(name, "empty file")
    if not sniff_dicom(path):
        return Skipped(name, "not DICOM")
    try:
        fh = path.open("rb")
    except OSError as err:
        return Skipped(name, f"unreadable ({err.strerror or err})")
    with fh:
        ds = _read_dataset(fh)
        if isinstance(ds, str):
            return Skipped(name, ds)
        reason = skip_reason(ds)
        if reason is not None:
            return Skipped(name, reason)
        if _transfer_syntax(ds) == DEFLATED:
            # the data set is one deflate stream: file offsets mean nothing, so parse it whole (rare)
            full = _read_dataset(path, whole=True)
            if isinstance(full, str):
                return Skipped(name, full)
            found = [k for k in _PIXEL_TAGS.values() if k in full]
            keyword, offset, declared = (found[0] if found else None), None, None
        else:
            keyword, offset, declared = _pixel_element(fh, ds)
    if keyword is None:
        return Skipped(name, "no pixel data")
    return _frames(ds, path, name, size, keyword, offset, declared)


def _read_dataset(source: BinaryIO | Path, whole: bool = False) -> Dataset | str:
    """pydicom's parse of a header (every value converted here, so that pydicom's errors on a malformed file are
    caught at this one place and nowhere else), or the reason the file is skipped. Only this call is guarded:
    an error in medpipe's own parsing after it is a bug and surfaces as one."""
    try:
        if whole:
            ds = pydicom.dcmread(source, force=True)
        else:
            ds = pydicom.dcmread(source, stop_before_pixels=True, force=True, specific_tags=HEADER_TAGS)
        ds.walk(lambda _ds, _elem: None)  # converts raw elements (values are parsed lazily otherwise)
    except HEADER_ERRORS as err:
        return f"unreadable DICOM header ({type(err).__name__})"
    return ds


def _frames(
    ds: Dataset, path: Path, name: str, size: int, keyword: str, offset: int | None, declared: int | None
) -> list[Frame]:
    syntax = _transfer_syntax(ds)
    encapsulated = declared == 0xFFFFFFFF
    rows, columns = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    bits_allocated = _int(ds, "BitsAllocated") or 0
    bits_stored = _int(ds, "BitsStored") or bits_allocated
    n_frames = _int(ds, "NumberOfFrames") or 1
    fmt = PixelFormat(
        transfer_syntax=syntax,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        high_bit=_int(ds, "HighBit") or bits_stored - 1,
        signed=_int(ds, "PixelRepresentation") == 1,
        samples=_int(ds, "SamplesPerPixel") or 1,
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper(),
        n_frames=n_frames,
        data_offset=offset,
        data_length=declared,
        big_endian=NATIVE_SYNTAXES.get(syntax, False),
        file_size=size,
        encapsulated=encapsulated,
    )
    issues = pixel_issues(fmt, rows, columns, declared, keyword)
    if fmt.high_bit != fmt.bits_stored - 1 and not issues:
        issues.append(f"HighBit {fmt.high_bit} with BitsStored {fmt.bits_stored} is not supported")
    common: dict[str, Any] = {
        "path": path,
        "name": name,
        "sop_uid": str(ds.get("SOPInstanceUID", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "") or "(no SeriesInstanceUID)"),
        "series_number": _int(ds, "SeriesNumber"),
        "description": str(ds.get("SeriesDescription", "") or ""),
        "modality": str(ds.get("Modality", "") or ""),
        "rows": rows,
        "columns": columns,
        "instance": _int(ds, "InstanceNumber"),
        "gantry_tilt_deg": (_floats(ds, "GantryDetectorTilt", 1) or (None,))[0],
        "patient_position": _text(ds, "PatientPosition"),
        "fmt": fmt,
    }
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    if not enhanced:
        if n_frames > 1:
            issues.append(f"multi-frame image ({n_frames} frames) without per-frame geometry is not supported")
        spacing = _floats(ds, "PixelSpacing", 2)
        return [
            Frame(
                index=None,
                pixel_spacing=(spacing[0], spacing[1]) if spacing else None,
                iop=_floats(ds, "ImageOrientationPatient", 6),
                ipp=_ipp(_floats(ds, "ImagePositionPatient", 3)),
                echo=_text(ds, "EchoNumbers"),
                temporal=_text(ds, "TemporalPositionIdentifier"),
                acquisition=_text(ds, "AcquisitionNumber"),
                slope=(_floats(ds, "RescaleSlope", 1) or (None,))[0],
                intercept=(_floats(ds, "RescaleIntercept", 1) or (None,))[0],
                has_lut_sequence="ModalityLUTSequence" in ds,
                issues=tuple(issues),
                **common,
            )
        ]
    return [_enhanced_frame(ds, i, issues, common) for i in range(n_frames)]


def _ipp(values: tuple[float, ...] | None) -> tuple[float, float, float] | None:
    return (values[0], values[1], values[2]) if values else None


def _enhanced_frame(ds: Dataset, i: int, issues: list[str], common: dict[str, Any]) -> Frame:
    """Frame ``i`` of an enhanced multi-frame image, geometry from the functional groups."""
    position = _functional(ds, i, "PlanePositionSequence")
    orientation = _functional(ds, i, "PlaneOrientationSequence")
    measures = _functional(ds, i, "PixelMeasuresSequence")
    transform = _functional(ds, i, "PixelValueTransformationSequence")
    content = _functional(ds, i, "FrameContentSequence")
    echo = _functional(ds, i, "MREchoSequence")
    spacing = _floats(measures, "PixelSpacing", 2)
    temporal = _text(content, "TemporalPositionIndex")
    stack = _text(content, "StackID")
    return Frame(
        index=i,
        pixel_spacing=(spacing[0], spacing[1]) if spacing else None,
        iop=_floats(orientation, "ImageOrientationPatient", 6),
        ipp=_ipp(_floats(position, "ImagePositionPatient", 3)),
        echo=_text(echo, "EffectiveEchoTime"),
        temporal=temporal if stack is None else f"stack {stack}, {temporal}",
        acquisition=None,
        slope=(_floats(transform, "RescaleSlope", 1) or (None,))[0],
        intercept=(_floats(transform, "RescaleIntercept", 1) or (None,))[0],
        has_lut_sequence=False,
        issues=tuple(issues),
        **common,
    )
