"""Decoding compressed pixel data.

JPEG 2000 frames (the usual archive/PACS compression, and the slow one) are read straight from the
encapsulated Pixel Data at the offset found by the header scan and decoded by imagecodecs (OpenJPEG) in a
thread pool: imagecodecs releases the GIL, so frames decode in parallel without worker processes. Every
other compressed or deflated syntax, and JPEG 2000 when imagecodecs is not installed, goes through pydicom's
decoders (pylibjpeg, RLE, deflate). Both paths return the stored values; masking to BitsStored, signedness
and the modality LUT are applied afterwards, identically, by :mod:`.pixels`.
"""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom import uid as dicom_uid
from pydicom.errors import BytesLengthException, InvalidDicomError

from medpipe.errors import DicomError

if TYPE_CHECKING:
    from medpipe.io.dicom.headers import Frame
    from medpipe.io.dicom.pixels import PixelFormat

#: JPEG 2000 (lossless only, and lossy) transfer syntaxes decoded by imagecodecs when it is installed.
J2K_SYNTAXES = {dicom_uid.JPEG2000Lossless, dicom_uid.JPEG2000}
_ERRORS = (
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
    BytesLengthException,
    InvalidDicomError,
)


def _imagecodecs() -> Any | None:
    try:
        import imagecodecs
    except ImportError:
        return None
    return imagecodecs if imagecodecs.JPEG2K.available else None


def fast_j2k(fmt: PixelFormat) -> bool:
    """True when this file's frames take the imagecodecs JPEG 2000 path."""
    return (
        fmt.transfer_syntax in J2K_SYNTAXES
        and fmt.encapsulated
        and fmt.data_offset is not None
        and bool(_imagecodecs())
    )


def decoder_problem(fmt: PixelFormat) -> str | None:
    """Why this file's pixels cannot be decoded (None when a decoder is available), from the header alone."""
    if fast_j2k(fmt):
        return None
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(fmt.transfer_syntax)
    except NotImplementedError:
        return f"cannot decode {fmt.syntax_name}: pydicom has no decoder for it"
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        return f"cannot decode {fmt.syntax_name}: install {missing}"
    return None


def thread_count(n_frames: int, workers: int | None) -> int:
    """Decoder threads: ``workers`` if given, else the CPUs this process may use (at most 8)."""
    if workers is not None:
        return max(1, workers)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 8, n_frames))


def j2k_codestreams(path: Path, fmt: PixelFormat) -> list[bytes]:
    """The encapsulated frames of one file, read from the Pixel Data value offset (no second header parse)."""
    from pydicom.encaps import generate_frames

    with path.open("rb") as fh:
        fh.seek(fmt.data_offset or 0)
        buffer = fh.read()
    return list(generate_frames(buffer, number_of_frames=fmt.n_frames))


def decode_with_pydicom(path: Path) -> np.ndarray:
    """Every frame of a compressed or deflated file, decoded by pydicom: (frames, rows, columns), stored values."""
    import pydicom
    from pydicom.pixels import pixel_array

    ds = pydicom.dcmread(path)
    arr = pixel_array(ds, raw=True)
    n_frames = int(ds.get("NumberOfFrames") or 1)
    return arr.reshape(n_frames, *arr.shape[-2:])


def _fail(frame: Frame, folder: Path, err: BaseException) -> DicomError:
    message = str(err).replace(str(frame.path), frame.name)
    return DicomError(
        f"cannot decode pixel data of {frame.name} ({frame.fmt.syntax_name}): {type(err).__name__}: {message}",
        path=folder,
    )


def _check_shape(arr: np.ndarray, frame: Frame, folder: Path) -> np.ndarray:
    if arr.shape != (frame.rows, frame.columns):
        raise DicomError(
            f"decoded image of {frame.name} has shape {arr.shape}, header declares {frame.rows} x {frame.columns}",
            path=folder,
        )
    return arr


def decode_frames(
    frames: list[Frame], folder: Path, *, workers: int | None = None, use_imagecodecs: bool = True
) -> dict[tuple[Path, int], np.ndarray]:
    """Stored values of compressed ``frames``, keyed by (path, frame index). Raises :class:`DicomError`."""
    out: dict[tuple[Path, int], np.ndarray] = {}
    fast = [f for f in frames if use_imagecodecs and fast_j2k(f.fmt)]
    fast_paths = {f.path for f in fast}
    slow_paths = sorted({f.path for f in frames if f.path not in fast_paths})
    by_path = {f.path: f for f in frames}
    for path in slow_paths:
        frame = by_path[path]
        try:
            arr = decode_with_pydicom(path)
        except _ERRORS as err:
            raise _fail(frame, folder, err) from err
        if arr.shape[0] < frame.fmt.n_frames:
            raise DicomError(
                f"{frame.name} decoded to {arr.shape[0]} frames, header declares {frame.fmt.n_frames}", path=folder
            )
        for i in range(arr.shape[0]):
            out[(path, i)] = _check_shape(arr[i], frame, folder)
    if fast:
        out.update(_decode_j2k(fast, folder, workers))
    return out


def _decode_j2k(frames: list[Frame], folder: Path, workers: int | None) -> dict[tuple[Path, int], np.ndarray]:
    codecs = _imagecodecs()
    if codecs is None:  # callers route frames here only when imagecodecs is importable
        raise ValueError("imagecodecs is not available")
    streams: dict[Path, list[bytes]] = {}
    for frame in frames:
        if frame.path not in streams:
            try:
                streams[frame.path] = j2k_codestreams(frame.path, frame.fmt)
            except _ERRORS as err:
                raise _fail(frame, folder, err) from err
        if (frame.index or 0) >= len(streams[frame.path]):
            raise DicomError(f"{frame.name}: frame {(frame.index or 0) + 1} missing from the pixel data", path=folder)

    def one(frame: Frame) -> np.ndarray | RuntimeError | ValueError:
        try:
            return codecs.jpeg2k_decode(streams[frame.path][frame.index or 0])
        except (RuntimeError, ValueError) as err:  # imagecodecs.Jpeg2kError is a RuntimeError
            return err

    threads = thread_count(len(frames), workers)
    if threads == 1:
        decoded = [one(f) for f in frames]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            decoded = list(pool.map(one, frames))
    out = {}
    for frame, arr in zip(frames, decoded, strict=True):
        if isinstance(arr, Exception):
            raise _fail(frame, folder, arr) from arr
        out[(frame.path, frame.index or 0)] = _check_shape(arr, frame, folder)
    return out
