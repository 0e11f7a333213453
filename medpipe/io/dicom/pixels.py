"""Pixel values of sorted frames: native reads at the offsets found by the header scan, decoding of
compressed transfer syntaxes (pydicom + pylibjpeg, in worker processes for long series), masking to
BitsStored, and the modality LUT (RescaleSlope/Intercept per slice, in float32 so HU never wrap).

The header pre-flight (sizes, truncation, decoder availability) already ran in :mod:`.headers`; the
checks here repeat only what the file could still contradict (bytes actually read, decoded shape).
"""

from __future__ import annotations

import multiprocessing
import os
import struct
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.uid import UID

from medpipe.errors import DicomError

if TYPE_CHECKING:
    from medpipe.io.dicom.headers import Frame

#: Largest accepted image plane and frame count (a lying header is refused before any allocation).
MAX_PLANE_PIXELS = 16384 * 16384
MAX_FRAMES = 65536

#: Compressed series with at least this many files are decoded in worker processes.
PARALLEL_MIN_FILES = 48
_DECODE_ERRORS = (
    RuntimeError,
    ValueError,
    NotImplementedError,
    OSError,
    EOFError,
    struct.error,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
)


@dataclass(frozen=True)
class PixelFormat:
    """How a file stores its pixels. ``data_offset`` is the byte offset of the values (native syntaxes only)."""

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

    @property
    def syntax_name(self) -> str:
        """The transfer syntax's name (or its UID when unknown)."""
        name = UID(self.transfer_syntax).name
        return name if name != self.transfer_syntax else f"unknown transfer syntax {self.transfer_syntax}"

    @property
    def native(self) -> bool:
        """True when the pixel values are read from ``data_offset`` without a decoder."""
        return self.data_offset is not None


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
    if fmt.native:
        expected = rows * columns * fmt.bits_allocated // 8 * fmt.n_frames
        if declared is None or declared == 0xFFFFFFFF:
            issues.append(f"native transfer syntax {fmt.syntax_name} with encapsulated pixel data")
        elif declared < expected:
            issues.append(
                f"pixel data holds {declared} bytes, header declares {expected} "
                f"({fmt.n_frames} x {rows} x {columns} x {fmt.bits_allocated} bits)"
            )
        elif fmt.file_size < (fmt.data_offset or 0) + expected:
            issues.append(
                f"truncated file: {fmt.file_size - (fmt.data_offset or 0)} bytes of pixel data, expected {expected}"
            )
        return issues
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(fmt.transfer_syntax)
    except NotImplementedError:
        return [f"cannot decode {fmt.syntax_name}: pydicom has no decoder for it"]
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        issues.append(f"cannot decode {fmt.syntax_name}: install {missing}")
    return issues


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


def decode_file(path: Path) -> np.ndarray:
    """Decode every frame of a (compressed or deflated) file with pydicom: (frames, rows, columns), raw values."""
    import pydicom
    from pydicom.pixels import pixel_array

    ds = pydicom.dcmread(path)
    arr = pixel_array(ds, raw=True)
    n_frames = int(ds.get("NumberOfFrames") or 1)
    return arr.reshape(n_frames, *arr.shape[-2:]) if arr.ndim >= 2 else arr


def _decode_chunk(paths: Sequence[Path]) -> list[np.ndarray | str]:
    """Worker: decode files; a failure is returned as its message (exceptions do not cross cleanly)."""
    out: list[np.ndarray | str] = []
    for path in paths:
        try:
            out.append(decode_file(path))
        except _DECODE_ERRORS as err:
            out.append(f"{type(err).__name__}: {err}")
    return out


def _worker_count(n_files: int, workers: int | None) -> int:
    if workers is not None:
        return max(1, workers)
    if n_files < PARALLEL_MIN_FILES:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 8, n_files // 16))


def _decode_all(paths: list[Path], workers: int) -> list[np.ndarray | str]:
    if workers <= 1 or len(paths) < 2:
        return _decode_chunk(paths)
    size = -(-len(paths) // (workers * 4))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method)) as pool:
        results = list(pool.map(_decode_chunk, chunks))
    return [item for chunk in results for item in chunk]


def _decoded(frames: list[Frame], folder: Path, workers: int | None) -> dict[Path, np.ndarray]:
    paths = sorted({f.path for f in frames if not f.fmt.native})
    if not paths:
        return {}
    results = _decode_all(paths, _worker_count(len(paths), workers))
    by_path = {f.path: f for f in frames}
    out: dict[Path, np.ndarray] = {}
    for path, result in zip(paths, results, strict=True):
        frame = by_path[path]
        if isinstance(result, str):
            message = result.replace(str(path), frame.name)
            raise DicomError(
                f"cannot decode pixel data of {frame.name} ({frame.fmt.syntax_name}): {message}", path=folder
            )
        if result.shape[-2:] != (frame.rows, frame.columns) or result.shape[0] < frame.fmt.n_frames:
            raise DicomError(
                f"decoded pixel data of {frame.name} has shape {result.shape}, header declares "
                f"{frame.fmt.n_frames} x {frame.rows} x {frame.columns}",
                path=folder,
            )
        out[path] = result
    return out


def mask_to_bits_stored(raw: np.ndarray, fmt: PixelFormat) -> tuple[np.ndarray, int]:
    """Clear bits above BitsStored (sign-extending signed data). Returns (values, count of changed voxels)."""
    raw = raw.astype(raw.dtype.newbyteorder("="), copy=False)
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


def read_stack(frames: list[Frame], folder: Path, *, workers: int | None = None) -> tuple[np.ndarray, StackValues]:
    """Pixel values of ``frames`` (already in slice order) as float32 (K, rows, columns), modality LUT applied."""
    k, rows, cols = len(frames), frames[0].rows, frames[0].columns
    out = np.empty((k, rows, cols), dtype=np.float32)
    decoded = _decoded(frames, folder, workers)
    masked = 0
    lut_frames = []
    for i, frame in enumerate(frames):
        raw = _read_native(frame, folder) if frame.fmt.native else decoded[frame.path][frame.index or 0]
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
        out *= slopes.astype(np.float32)[:, None, None]
    if np.any(inters != 0.0):
        out += inters.astype(np.float32)[:, None, None]
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
