"""Pixel values of sorted frames, and the header pre-flight that runs before any pixel is read.

Native (uncompressed) frames are read at the byte offsets the header scan found; compressed frames are
decoded by :mod:`.decode`. Values are masked to BitsStored (sign-extended when signed) and the modality LUT
(RescaleSlope/Intercept per slice) is applied in float32, so HU never wrap around.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom import uid as dicom_uid
from pydicom.uid import UID

from medpipe.errors import DicomError

if TYPE_CHECKING:
    from medpipe.io.dicom.headers import Frame

#: Largest accepted image plane and frame count (a lying header is refused before any allocation).
MAX_PLANE_PIXELS = 16384 * 16384
MAX_FRAMES = 65536

#: Transfer syntaxes whose pixel values are read straight from the file (value: big endian).
NATIVE_SYNTAXES: dict[str, bool] = {
    dicom_uid.ImplicitVRLittleEndian: False,
    dicom_uid.ExplicitVRLittleEndian: False,
    dicom_uid.ExplicitVRBigEndian: True,  # retired
}


@dataclass(frozen=True)
class PixelFormat:
    """How a file stores its pixels.

    ``data_offset`` is the byte offset of the Pixel Data value (native values, or the first item of
    encapsulated data); None when offsets are meaningless (a deflated data set).
    """

    transfer_syntax: str
    bits_allocated: int
    bits_stored: int
    high_bit: int
    signed: bool
    samples: int
    photometric: str
    n_frames: int
    data_offset: int | None
    data_length: int | None
    big_endian: bool
    file_size: int
    encapsulated: bool = False

    @property
    def syntax_name(self) -> str:
        """The transfer syntax's name (or its UID when unknown)."""
        name = UID(self.transfer_syntax).name
        return name if name != self.transfer_syntax else f"unknown transfer syntax {self.transfer_syntax}"

    @property
    def native(self) -> bool:
        """True when the pixel values are read from ``data_offset`` without a decoder."""
        return self.transfer_syntax in NATIVE_SYNTAXES and not self.encapsulated and self.data_offset is not None


def pixel_issues(fmt: PixelFormat, rows: int, columns: int, declared: int | None, keyword: str) -> list[str]:
    """Header pre-flight: sizes, bit depths, photometric interpretation, decoder availability, truncation."""
    issues: list[str] = []
    if keyword != "PixelData":
        issues.append(f"{keyword} (floating-point pixels) is not supported")
    if rows < 1 or columns < 1 or rows * columns > MAX_PLANE_PIXELS:
        issues.append(f"implausible image size {rows}x{columns} (at most {MAX_PLANE_PIXELS} pixels per image)")
    if not 1 <= fmt.n_frames <= MAX_FRAMES:
        issues.append(f"implausible NumberOfFrames {fmt.n_frames} (1 to {MAX_FRAMES} accepted)")
    if fmt.samples != 1 or fmt.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        issues.append(
            f"{fmt.samples} samples per pixel ({fmt.photometric}); expected 1 (MONOCHROME2): colour is not supported"
        )
    if fmt.bits_allocated not in (8, 16, 32) or not 1 <= fmt.bits_stored <= fmt.bits_allocated:
        issues.append(f"BitsAllocated {fmt.bits_allocated} / BitsStored {fmt.bits_stored} is not supported")
    if issues:
        return issues
    if fmt.transfer_syntax in NATIVE_SYNTAXES and fmt.encapsulated:
        return [f"encapsulated (compressed) pixel data under the uncompressed {fmt.syntax_name}"]
    if fmt.native:
        expected = rows * columns * fmt.bits_allocated // 8 * fmt.n_frames
        if (declared or 0) < expected:
            issues.append(
                f"pixel data holds {declared} bytes, header declares {expected} "
                f"({fmt.n_frames} x {rows} x {columns} x {fmt.bits_allocated} bits)"
            )
        elif fmt.file_size < (fmt.data_offset or 0) + expected:
            issues.append(
                f"truncated file: {fmt.file_size - (fmt.data_offset or 0)} bytes of pixel data, expected {expected}"
            )
        return issues
    from medpipe.io.dicom.decode import decoder_problem

    problem = decoder_problem(fmt)
    return [problem] if problem else []


@dataclass(frozen=True)
class StackValues:
    """What reading the pixels found: masked voxel count and the value transform applied."""

    masked_voxels: int
    rescale: str
    integer_valued: bool


def _dtype(fmt: PixelFormat) -> np.dtype:
    kind = "i" if fmt.signed else "u"
    return np.dtype(f"{'>' if fmt.big_endian else '<'}{kind}{fmt.bits_allocated // 8}")


def _read_native(frame: Frame, folder: Path) -> np.ndarray:
    fmt = frame.fmt
    dtype = _dtype(fmt)
    count = frame.rows * frame.columns
    offset = (fmt.data_offset or 0) + (frame.index or 0) * count * dtype.itemsize
    try:
        raw = np.fromfile(frame.path, dtype=dtype, count=count, offset=offset)
    except OSError as err:
        raise DicomError(f"cannot read pixel data of {frame.name}: {err.strerror or err}", path=folder) from err
    if raw.size != count:
        raise DicomError(
            f"truncated pixel data in {frame.name}: {raw.size * dtype.itemsize} bytes, expected "
            f"{count * dtype.itemsize}",
            path=folder,
        )
    return raw.reshape(frame.rows, frame.columns)


def mask_to_bits_stored(raw: np.ndarray, fmt: PixelFormat) -> tuple[np.ndarray, int]:
    """Clear bits above BitsStored (sign-extending signed data). Returns (values, count of changed voxels).

    A decoder that disagrees with PixelRepresentation (a JPEG 2000 stream declared unsigned for signed data)
    is corrected first: the values are reinterpreted with the header's signedness.
    """
    raw = raw.astype(raw.dtype.newbyteorder("="), copy=False)
    if raw.dtype.kind in "iu" and (raw.dtype.kind == "i") != fmt.signed:
        raw = raw.view(f"{'i' if fmt.signed else 'u'}{raw.itemsize}")
    bits, stored = raw.dtype.itemsize * 8, fmt.bits_stored
    if stored >= bits or raw.dtype.kind not in "iu":
        return raw, 0
    udt, sdt = np.dtype(f"u{raw.itemsize}"), np.dtype(f"i{raw.itemsize}")
    unsigned = raw.view(udt)
    low = unsigned & udt.type((1 << stored) - 1)
    if fmt.signed:
        shift = bits - stored
        values = (low << udt.type(shift)).view(sdt) >> sdt.type(shift)
    else:
        values = low
    changed = int(np.count_nonzero(values.view(udt) != unsigned))
    return values, changed


#: float32 holds every integer up to 2**24 exactly; stored values wider than this are kept in float64.
FLOAT32_EXACT_BITS = 24


def read_stack(frames: list[Frame], folder: Path, *, workers: int | None = None) -> tuple[np.ndarray, StackValues]:
    """Pixel values of ``frames`` (already in slice order) as float32 (K, rows, columns), modality LUT applied.

    Stored values wider than 24 bits (BitsStored > 24, e.g. 32-bit integers) come back as float64 instead, so
    that no integer changes (float32 would round 16777217 to 16777216)."""
    from medpipe.io.dicom.decode import decode_frames

    k, rows, cols = len(frames), frames[0].rows, frames[0].columns
    wide = any(f.fmt.bits_stored > FLOAT32_EXACT_BITS for f in frames)
    out = np.empty((k, rows, cols), dtype=np.float64 if wide else np.float32)
    decoded = decode_frames([f for f in frames if not f.fmt.native], folder, workers=workers)
    masked = 0
    lut_frames = []
    for i, frame in enumerate(frames):
        raw = _read_native(frame, folder) if frame.fmt.native else decoded[(frame.path, frame.index or 0)]
        raw, changed = mask_to_bits_stored(raw, frame.fmt)
        masked += changed
        if frame.has_lut_sequence:
            lut_frames.append(i)
            out[i] = _apply_lut_sequence(raw, frame)
        else:
            out[i] = raw
    slopes = np.asarray([1.0 if f.slope is None or i in lut_frames else f.slope for i, f in enumerate(frames)])
    inters = np.asarray([0.0 if f.intercept is None or i in lut_frames else f.intercept for i, f in enumerate(frames)])
    if np.any(slopes != 1.0):
        out *= slopes.astype(out.dtype)[:, None, None]
    if np.any(inters != 0.0):
        out += inters.astype(out.dtype)[:, None, None]
    integer = not lut_frames and bool(np.all(slopes == np.rint(slopes)) and np.all(inters == np.rint(inters)))
    return out, StackValues(masked, _describe_rescale(slopes, inters, len(lut_frames)), integer)


def _apply_lut_sequence(raw: np.ndarray, frame: Frame) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(frame.path, stop_before_pixels=True)
    result: Any = apply_modality_lut(raw, ds)
    return np.asarray(result, dtype=np.float32)


def _describe_rescale(slopes: np.ndarray, inters: np.ndarray, n_lut: int) -> str:
    if n_lut:
        return f"ModalityLUTSequence applied on {n_lut} slices"
    if np.all(slopes == slopes[0]) and np.all(inters == inters[0]):
        return f"value = stored x {slopes[0]:g} + {inters[0]:g} (all slices)"
    return (
        f"value = stored x slope + intercept per slice (slope {slopes.min():g} to {slopes.max():g}, "
        f"intercept {inters.min():g} to {inters.max():g})"
    )
