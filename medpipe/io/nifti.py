"""NIfTI reading with a header pre-flight, and label-map writing.

Conventions: arrays are in the file's voxel order (I, J, K[, C]); affines map voxel indices to RAS+ world
millimetres (nibabel's convention; the sform when its code is set, else the qform).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np

from medpipe.errors import InputError
from medpipe.io.memory import available_bytes, gib

#: A volume larger than this many voxels is refused before allocation (lying headers, gzip bombs).
MAX_VOXELS = 2048 * 2048 * 2048
#: A .nii.gz whose header declares more than this many times its compressed size is decompressed once as a
#: stream (nothing kept) to check that the data is really there before anything is allocated (gzip bombs).
GZIP_VERIFY_RATIO = 50
#: qform and sform (both valid) may differ by this much (mm, any affine entry) before it is reported.
QFORM_SFORM_TOL_MM = 1e-3
#: Label values within this distance of an integer are rounded (and the rounding reported); beyond, refused.
LABEL_ROUNDING_TOL = 1e-3
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti_path(path: Path) -> bool:
    """True when the file name ends in .nii or .nii.gz."""
    return path.name.endswith(NIFTI_SUFFIXES)


def case_id_from_path(path: str | Path) -> str:
    """The file name without its NIfTI extension (``case_00001.nii.gz`` -> ``case_00001``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


@dataclass(frozen=True)
class NiftiInfo:
    """What a NIfTI header says, checked for plausibility. ``spacing_mm`` is per array axis (I, J, K)."""

    path: Path
    shape: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    affine: np.ndarray
    dtype: str
    orientation: str
    #: Which header transform gives ``affine``: "sform" (when its code is set: nibabel's rule) or "qform".
    transform: str = "sform"
    #: Set when both qform and sform are valid and disagree by more than :data:`QFORM_SFORM_TOL_MM`.
    transform_note: str = ""

    def transform_record(self) -> dict[str, object]:
        """For provenance records: which transform was used, and how far the other one disagrees."""
        return {"used": self.transform, **({"warning": self.transform_note} if self.transform_note else {})}

    @property
    def n_channels(self) -> int:
        """Size of the 4th axis (1 for a 3D image)."""
        return self.shape[3] if len(self.shape) > 3 else 1


def _nifti(path: Path) -> nib.Nifti1Image:
    """nibabel's loader, typed as the NIfTI image it returns for files :func:`inspect_nifti` accepted."""
    return cast(nib.Nifti1Image, nib.load(str(path)))


def _check_file(path: Path) -> None:
    if not path.exists():
        if path.is_symlink():
            raise InputError("broken symbolic link", path=path)
        raise InputError("file not found", path=path)
    if path.is_dir():
        raise InputError("is a folder, expected a NIfTI file (.nii/.nii.gz)", path=path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(2)
    except OSError as err:
        raise InputError(f"cannot read file: {err.strerror or err}", path=path) from err
    if size == 0:
        raise InputError("empty file (0 bytes), expected a NIfTI image", path=path)
    if path.name.endswith(".gz") and head != b"\x1f\x8b":
        raise InputError("named .gz but is not gzip-compressed", path=path, hint="rename it to .nii")


def _raw_pixdim(path: Path, header_class: Any) -> np.ndarray:
    """pixdim[1:4] as stored on disk (nibabel silently replaces zeros by 1 when it loads a header)."""
    with nib.openers.ImageOpener(str(path)) as fh:
        raw = header_class.from_fileobj(fh, check=False)
    return np.asarray(raw["pixdim"][1:4], dtype=float)


def inspect_nifti(path: str | Path, *, allow_4d: bool = False) -> NiftiInfo:
    """Read and validate a NIfTI header without reading voxel data.

    Raises :class:`InputError` for a missing/empty/non-NIfTI file, a 2D or 5D image (4D unless
    ``allow_4d``), a declared size over :data:`MAX_VOXELS`, a truncated uncompressed file, zero or negative
    spacing, or a singular affine.
    """
    path = Path(path)
    _check_file(path)
    try:
        img = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as err:
        raise InputError(f"not a readable NIfTI image ({err})", path=path) from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"expected a NIfTI image, found {type(img).__name__}", path=path)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 3 or (len(shape) == 3 and min(shape) == 1 and shape[2] == 1):
        raise InputError(f"2D image (shape {shape}), expected a 3D volume", path=path)
    if len(shape) > 4 or (len(shape) == 4 and not allow_4d):
        want = "a 3D volume or 4D channels" if allow_4d else "a 3D volume"
        raise InputError(f"{len(shape)}D image (shape {shape}), expected {want}", path=path)
    if any(s < 1 for s in shape) or int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise InputError(f"implausible size {shape} (more than {MAX_VOXELS} voxels)", path=path)
    hdr = img.header
    kind = hdr.get_data_dtype().kind
    if kind in "cV" or hdr.get_data_dtype().names:
        what = "complex" if kind == "c" else "RGB / structured"
        raise InputError(f"{what} voxels ({hdr.get_data_dtype()}), expected real-valued intensities", path=path,
                         hint="convert it to a real-valued (e.g. magnitude or grey-scale) image first")
    _check_declared_size(path, shape, hdr)
    pixdim = _raw_pixdim(path, type(hdr))
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise InputError(
            f"zero or negative voxel spacing {tuple(float(p) for p in pixdim)} mm, expected positive values",
            path=path,
        )
    qcode, scode = int(hdr["qform_code"]), int(hdr["sform_code"])
    if qcode == 0 and scode == 0:
        raise InputError("no valid spatial transform (qform_code and sform_code are both 0)", path=path)
    affine = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError("singular or non-finite affine", path=path)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    unit = affine[:3, :3] / np.asarray(spacing)
    shear = float(np.max(np.abs(unit.T @ unit - np.eye(3))))
    if shear > 1e-3:
        raise InputError(
            f"sheared (non-orthogonal) affine: axis cosines deviate from orthogonal by {shear:.3g}",
            path=path,
            hint="resample the image onto an orthogonal grid first",
        )
    orientation = "".join(nib.aff2axcodes(affine))
    transform, note = ("sform" if scode > 0 else "qform"), ""
    if qcode > 0 and scode > 0:
        gap = float(np.max(np.abs(np.asarray(hdr.get_qform(), dtype=float) - affine)))
        if gap > QFORM_SFORM_TOL_MM:
            note = f"qform and sform disagree by up to {gap:.3g} mm; the sform is used (nibabel's rule)"
    return NiftiInfo(path, shape, spacing, affine, str(hdr.get_data_dtype()), orientation, transform, note)


def _check_declared_size(path: Path, shape: tuple[int, ...], hdr: Any) -> None:
    """Refuse, from the header and the file size alone, data that is not there or would not fit in memory."""
    n_voxels = int(np.prod(shape, dtype=np.int64))
    itemsize = int(hdr.get_data_dtype().itemsize)
    expected = int(hdr.get_data_offset()) + n_voxels * itemsize
    actual = path.stat().st_size
    dtype = str(hdr.get_data_dtype())
    if not path.name.endswith(".gz") and actual < expected:
        raise InputError(f"truncated file: {actual} bytes, header declares {expected}", path=path)
    need = n_voxels * (itemsize + 4)  # the stored array plus its float32 copy
    free = available_bytes()
    if free is not None and need > free:
        raise InputError(
            f"header declares {shape} {dtype} voxels: reading it needs about {gib(need)}, "
            f"{gib(free)} of memory is available",
            path=path, hint="check the header (a lying header or a gzip bomb), or use a machine with more memory")
    if path.name.endswith(".gz") and expected > GZIP_VERIFY_RATIO * actual:
        inflated = _gunzipped_size(path, expected)
        if inflated < expected:
            raise InputError(f"truncated or lying file: the gzip stream holds {inflated} bytes, the header "
                             f"declares {expected} ({shape} {dtype})", path=path)


def _gunzipped_size(path: Path, limit: int) -> int:
    """Decompressed length of a gzip file, counted in 1 MiB chunks without keeping them (stops at ``limit``)."""
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while total < limit and (chunk := fh.read(1 << 20)):
                total += len(chunk)
    except (OSError, EOFError, zlib.error):
        return total
    return total


def load_nifti(path: str | Path, *, allow_4d: bool = False, dtype: type = np.float32) -> tuple[np.ndarray, NiftiInfo]:
    """Load a validated NIfTI image (scaling applied) and refuse NaN/Inf voxels. Returns (array, info)."""
    info = inspect_nifti(path, allow_4d=allow_4d)
    try:
        data: np.ndarray = np.asanyarray(_nifti(info.path).dataobj).astype(dtype, copy=False)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(f"cannot read voxel data ({err})", path=info.path) from err
    check_finite(data, info.path)
    return data, info


def check_finite(data: np.ndarray, path: str | Path) -> None:
    """Raise :class:`InputError` naming the count of NaN and Inf voxels, if any."""
    if np.issubdtype(data.dtype, np.floating):
        n_nan = int(np.isnan(data).sum())
        n_inf = int(np.isinf(data).sum())
        if n_nan or n_inf:
            raise InputError(f"{n_nan} NaN and {n_inf} Inf voxels, expected finite values", path=path)


def load_label(path: str | Path, allowed: set[int] | None = None,
               notes: list[str] | None = None) -> tuple[np.ndarray, NiftiInfo]:
    """Load an integer label map. Refuses scaling, values further than :data:`LABEL_ROUNDING_TOL` from an
    integer, and values outside ``allowed``. Float values within the tolerance are rounded, and when ``notes``
    is given a line saying how many voxels were rounded and by how much is appended to it."""
    info = inspect_nifti(path)
    img = _nifti(info.path)
    proxy: Any = img.dataobj
    slope, inter = float(proxy.slope), float(proxy.inter)
    if slope != 1.0 or inter != 0.0:
        raise InputError(f"label file has intensity scaling (slope {slope}, intercept {inter})", path=path)
    try:
        raw = np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error) as err:
        raise InputError(f"cannot read voxel data ({err})", path=path) from err
    if np.issubdtype(raw.dtype, np.floating):
        check_finite(raw, path)
        rounded = np.rint(raw)
        err_max = float(np.max(np.abs(raw - rounded))) if raw.size else 0.0
        if err_max > LABEL_ROUNDING_TOL:
            raise InputError(f"non-integer label values (max deviation {err_max:.4g}, more than the tolerance "
                             f"{LABEL_ROUNDING_TOL:g})", path=path, hint="save the label map as integers")
        n_rounded = int(np.count_nonzero(raw != rounded))
        if n_rounded and notes is not None:
            notes.append(f"{n_rounded} non-integer label values rounded to the nearest integer "
                         f"(max deviation {err_max:.3g})")
        raw = rounded
    labels = raw.astype(np.int32)
    if allowed is not None:
        unexpected = sorted(set(np.unique(labels).tolist()) - set(allowed))
        if unexpected:
            raise InputError(
                f"label values {unexpected} are not in the label map {sorted(allowed)}",
                path=path,
                hint="fix the label file or the config's labels",
            )
    return labels, info


def label_dtype(max_label: int) -> type:
    """uint8 when the labels fit, else uint16."""
    if max_label < 0 or max_label > 65535:
        raise ValueError(f"label value {max_label} does not fit uint16")
    return np.uint8 if max_label <= 255 else np.uint16


def nifti_image(data: np.ndarray, affine: np.ndarray, descrip: str, slope: float = 1.0) -> nib.Nifti1Image:
    """The ONE header policy of every NIfTI medpipe writes: ``data`` stored in its own dtype, slope 1 /
    intercept 0 (values are what they say; only quantised maps state another ``slope``, e.g. 1/255 for
    probabilities stored as uint8), qform = sform = ``affine`` (code 1, scanner), units mm and s, and a short
    ``descrip`` naming the writer (never patient data)."""
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    header = img.header
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(slope, 0.0)
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = descrip.encode("ascii")[:79]
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def mask_image(labels: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A NIfTI label image (:func:`nifti_image`) in the smallest unsigned integer dtype that holds the labels."""
    max_label = int(labels.max()) if labels.size else 0
    return nifti_image(labels.astype(label_dtype(max_label)), affine, "medpipe mask")
