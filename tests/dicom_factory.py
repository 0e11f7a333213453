"""Synthetic DICOM series for tests, built with pydicom (no mocks): tiny, deterministic, fully known.

A series is 16 columns x 12 rows x 8 slices by default. Slice k stores ``100*k + pattern`` where
``pattern = 10*(row % 4) + column % 8`` (< 100), so both the slice order (value // 100) and the in-plane
orientation (a flip or transpose changes the pattern) are checkable. Spacing is anisotropic (column 0.6 mm,
row 0.8 mm, slices 2.5 mm), the origin is not zero, and file names are unrelated to slice order.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

COLUMNS, ROWS, SLICES = 16, 12, 8
PIXEL_SPACING = (0.8, 0.6)  # DICOM order: (row spacing, column spacing)
ORIGIN = (-10.0, 20.0, 30.0)
ORIENTATIONS = {
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def oblique_iop(deg_x: float = 17.0, deg_z: float = 23.0) -> tuple[float, ...]:
    """An oblique orientation: axial rotated about x then z."""
    ax, az = np.radians(deg_x), np.radians(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rot = rz @ rx
    return tuple(float(v) for v in np.concatenate([rot[:, 0], rot[:, 1]]))


def pattern(rows: int = ROWS, columns: int = COLUMNS) -> np.ndarray:
    """The in-plane pattern (rows, columns): 10 * (row % 4) + column % 8."""
    j, i = np.mgrid[0:rows, 0:columns]
    return (10 * (j % 4) + i % 8).astype(np.int32)


@dataclass
class Series:
    """What was written: files (in slice order, dropped slices excluded), stored values and geometry."""

    folder: Path
    files: list[Path]
    stored: np.ndarray  # (K, rows, columns) stored values in slice order
    positions: np.ndarray  # (K, 3) ImagePositionPatient (LPS) in slice order
    iop: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    series_uid: str
    slope: float = 1.0
    intercept: float = 0.0

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.iop[:3], self.iop[3:])

    def expected_array(self) -> np.ndarray:
        """(I, J, K) = (columns, rows, slices) values after the modality LUT."""
        return (self.stored.astype(np.float64) * self.slope + self.intercept).transpose(2, 1, 0)

    def expected_affine(self) -> np.ndarray:
        """RAS+ affine of an evenly spaced, untilted stack (column step, row step, slice step, first IPP)."""
        r, c = np.asarray(self.iop[:3]), np.asarray(self.iop[3:])
        lps = np.eye(4)
        lps[:3, 0] = r * self.pixel_spacing[1]
        lps[:3, 1] = c * self.pixel_spacing[0]
        lps[:3, 2] = (self.positions[-1] - self.positions[0]) / (len(self.positions) - 1)
        lps[:3, 3] = self.positions[0]
        return LPS_TO_RAS @ lps


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def base_dataset(
    path: Path,
    *,
    sop_class: str = CTImageStorage,
    transfer_syntax: str = ExplicitVRLittleEndian,
    sop_uid: str | None = None,
) -> FileDataset:
    """An empty DICOM file data set with file meta (preamble + DICM)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid or _uid(path))
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    return ds


def _sitk_encoded(arr: np.ndarray, compressor: str, tmp: Path) -> bytes:
    """Encapsulated pixel data of one slice, compressed by SimpleITK/GDCM (JPEG lossless or JPEG 2000)."""
    import pydicom
    import SimpleITK as sitk

    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetFileName(str(tmp))
    writer.SetUseCompression(True)
    writer.SetCompressor(compressor)
    writer.Execute(sitk.GetImageFromArray(arr[None]))
    data = pydicom.dcmread(tmp).PixelData
    tmp.unlink()
    return data


def encode_pixels(ds: FileDataset, arr: np.ndarray, transfer_syntax: str, path: Path) -> None:
    """Store ``arr`` (rows, columns) in ``ds`` with ``transfer_syntax`` (native, deflate, RLE, JPEG LL, J2K)."""
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    if transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds.PixelData = arr.tobytes()
    elif transfer_syntax == ExplicitVRBigEndian:
        ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    elif transfer_syntax == RLELossless:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = arr.tobytes()
        ds.compress(RLELossless, arr)
    elif transfer_syntax in (JPEGLosslessSV1, JPEG2000Lossless):
        compressor = "JPEG" if transfer_syntax == JPEGLosslessSV1 else "JPEG2000"
        ds.PixelData = _sitk_encoded(arr, compressor, path.with_suffix(".tmp.dcm"))
        ds["PixelData"].VR = "OB"
    else:
        raise ValueError(f"factory cannot encode {transfer_syntax}")


def save(ds: FileDataset, path: Path) -> None:
    """Write ``ds`` with the encoding its TransferSyntaxUID says (big endian included)."""
    import pydicom

    big = ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    pydicom.dcmwrite(path, ds, implicit_vr=implicit, little_endian=not big, enforce_file_format=True)


def write_series(
    folder: Path,
    *,
    n_slices: int = SLICES,
    orientation: str | tuple[float, ...] = "axial",
    pixel_spacing: tuple[float, float] = PIXEL_SPACING,
    dz: float = 2.5,
    dz_list: list[float] | None = None,
    origin: tuple[float, float, float] = ORIGIN,
    instance_order: str = "ascending",
    drop: tuple[int, ...] = (),
    duplicate: int | None = None,
    tilt_mm_per_slice: float = 0.0,
    series_number: int = 3,
    description: str = "synthetic CT",
    series_uid: str | None = None,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = 0.0,
    bits_stored: int = 16,
    signed: bool = True,
    values: Callable[[int], np.ndarray] | None = None,
    patient_name: str = "Test^Patient",
    patient_id: str = "TEST-ID",
    edit: Callable[[Dataset, int], None] | None = None,
    seed: int = 0,
    rows: int = ROWS,
    columns: int = COLUMNS,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Series:
    """Write a series into ``folder``; file names are shuffled (unrelated to slice order).

    ``dz_list`` gives each gap (length n_slices - 1) instead of a constant ``dz``. ``tilt_mm_per_slice``
    moves each slice along the column direction (a gantry-tilt shear). ``drop`` removes slices after the
    geometry is laid out (a missing slice); ``duplicate`` writes slice k a second time with another
    SOPInstanceUID. ``values(k)`` overrides the stored values of slice k (rows, columns). ``edit(ds, k)`` may
    change any tag before the file is saved.
    """
    folder.mkdir(parents=True, exist_ok=True)
    iop = ORIENTATIONS[orientation] if isinstance(orientation, str) else tuple(orientation)
    r, c = np.asarray(iop[:3]), np.asarray(iop[3:])
    normal = np.cross(r, c)
    gaps = dz_list if dz_list is not None else [dz] * (n_slices - 1)
    offsets = np.concatenate([[0.0], np.cumsum(gaps)])
    positions = np.asarray(origin) + np.outer(offsets, normal) + np.outer(np.arange(n_slices) * tilt_mm_per_slice, c)
    uid = series_uid or _uid("series", folder, series_number, seed)
    study = _uid("study", seed)
    frame_of_ref = _uid("for", seed)
    keep = [k for k in range(n_slices) if k not in drop]
    written = keep + ([duplicate] if duplicate is not None else [])
    rng = random.Random(seed)
    names = [f"IM{n:04d}.dcm" for n in rng.sample(range(1000, 9999), len(written))]
    instance = list(range(1, len(written) + 1))
    if instance_order == "descending":
        instance = instance[::-1]
    elif instance_order == "shuffled":
        rng.shuffle(instance)
    files: list[Path] = []
    stored_slices: list[np.ndarray] = []
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    for n, k in enumerate(written):
        path = folder / names[n]
        ds = base_dataset(path, sop_class=sop_class, sop_uid=_uid("sop", folder, seed, n))
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = uid
        ds.FrameOfReferenceUID = frame_of_ref
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.Modality = modality
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        if instance_order != "missing":
            ds.InstanceNumber = instance[n]
        ds.ImagePositionPatient = [round(float(v), 6) for v in positions[k]]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in iop]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = dz
        ds.PatientPosition = "HFS"
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 1 if signed else 0
        if modality == "CT" or slope != 1.0 or intercept != 0.0:
            ds.RescaleSlope = slope
            ds.RescaleIntercept = intercept
        stored = values(k) if values is not None else 100 * k + pattern(rows, columns)
        dtype = np.int16 if signed else np.uint16
        encode_pixels(ds, np.asarray(stored).astype(dtype), transfer_syntax, path)
        if edit is not None:
            edit(ds, k)
        save(ds, path)
        files.append(path)
        if n < len(keep):
            stored_slices.append(np.asarray(stored))
    return Series(
        folder=folder,
        files=files,
        stored=np.stack(stored_slices),
        positions=positions[keep],
        iop=iop,
        pixel_spacing=pixel_spacing,
        series_uid=uid,
        slope=slope,
        intercept=intercept,
    )


def write_enhanced(
    path: Path,
    *,
    n_frames: int = SLICES,
    orientation: str = "axial",
    dz: float = 2.5,
    with_positions: bool = True,
    slope: float = 1.0,
    intercept: float = -1024.0,
    seed: int = 0,
) -> Series:
    """One enhanced multi-frame CT file; frames stored in reverse spatial order (geometry per frame)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    iop = ORIENTATIONS[orientation]
    normal = np.cross(iop[:3], iop[3:])
    positions = np.asarray(ORIGIN) + np.outer(np.arange(n_frames) * dz, normal)
    ds = base_dataset(path, sop_class="1.2.840.10008.5.1.4.1.1.2.1", sop_uid=_uid("enh", path, seed))
    ds.PatientName, ds.PatientID = "Test^Patient", "TEST-ID"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid("study", seed), _uid("enh-series", path, seed)
    ds.FrameOfReferenceUID = _uid("for", seed)
    ds.SeriesNumber, ds.SeriesDescription, ds.Modality = 7, "enhanced CT", "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = ROWS, COLUMNS, n_frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    measures, plane, transform = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = list(PIXEL_SPACING), dz
    plane.ImageOrientationPatient = list(iop)
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept, "HU"
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([plane])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    order = list(range(n_frames))[::-1]  # frame f holds slice order[f]
    per_frame = []
    for f, k in enumerate(order):
        item, pos, content = Dataset(), Dataset(), Dataset()
        pos.ImagePositionPatient = [float(v) for v in positions[k]]
        content.InStackPositionNumber = f + 1
        if with_positions:
            item.PlanePositionSequence = Sequence([pos])
        item.FrameContentSequence = Sequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    stored = np.stack([100 * k + pattern() for k in range(n_frames)])
    ds.PixelData = stored[order].astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return Series(path.parent, [path], stored, positions, iop, PIXEL_SPACING, ds.SeriesInstanceUID, slope, intercept)


def sitk_volume(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK's ImageSeriesReader on ``files``: (I, J, K) float array and RAS+ affine (an independent oracle)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    img = reader.Execute()
    arr = sitk.GetArrayFromImage(img).astype(np.float64).transpose(2, 1, 0)
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return arr, LPS_TO_RAS @ lps


def sitk_sorted_files(folder: Path) -> list[Path]:
    """The file order GDCM's series helper gives (sorted by position)."""
    import SimpleITK as sitk

    return [Path(p) for p in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))]
