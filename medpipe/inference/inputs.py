"""Inference inputs: NIfTI files, folders of them, multi-channel groups, and DICOM folders -> cases.

A case read for inference is a channel-first float32 array on its source grid (RAS+ affine), validated:
finite values, positive spacing, a sane affine, and all channels on one grid.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medpipe.errors import InputError
from medpipe.io.dicom import is_dicom_folder, read_dicom_volume
from medpipe.io.dicom.naming import output_stem
from medpipe.io.dicom.options import DicomOptions
from medpipe.io.dicom.provenance import DicomProvenance
from medpipe.io.geometry import Grid, require_same_grid
from medpipe.io.intensity import HuCheck, check_ct_hu
from medpipe.io.nifti import case_id_from_path, inspect_nifti, is_nifti_path, load_nifti
from medpipe.runtime import sha256_files


@dataclass(frozen=True)
class InputCase:
    """One case to segment: NIfTI files (one per channel, in channel order) or one DICOM folder."""

    case_id: str
    files: tuple[Path, ...] = ()
    dicom_dir: Path | None = None
    note: str | None = None


@dataclass(frozen=True)
class SpatialTransform:
    """Which NIfTI transform placed the image (``sform`` or ``qform``) and, when the two disagree, by how much
    (BAD-INPUTS N1)."""

    used: str
    warning: str | None = None

    @classmethod
    def of(cls, record: dict[str, object] | None) -> SpatialTransform | None:
        if not record:
            return None
        warning = record.get("warning")
        return cls(str(record.get("used")), str(warning) if warning else None)

    def to_json(self) -> dict[str, Any]:
        return {"used": self.used, **({"warning": self.warning} if self.warning else {})}


@dataclass(frozen=True)
class InputProvenance:
    """How a case was read: from NIfTI files, or from a DICOM series (with its full :class:`DicomProvenance`)."""

    kind: str = "nifti"
    dicom: DicomProvenance | None = None
    spatial_transform: SpatialTransform | None = None

    @property
    def modality(self) -> str | None:
        """The modality a DICOM header states (None for NIfTI, which states none)."""
        return self.dicom.source.modality if self.dicom is not None else None

    def to_json(self) -> dict[str, Any]:
        if self.dicom is None:
            st = {"spatial_transform": self.spatial_transform.to_json()} if self.spatial_transform else {}
            return {"format": self.kind, **st}
        body = {k: v for k, v in self.dicom.to_json().items() if k != "format"}
        return {"format": "dicom", "series_uid": self.dicom.source.series_uid, **body,
                "provenance_format": self.dicom.format}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InputProvenance:
        if d.get("format") != "dicom":
            st = d.get("spatial_transform")
            return cls(str(d.get("format", "nifti")), None, SpatialTransform.of(st if isinstance(st, dict) else None))
        body = {k: v for k, v in d.items() if k not in ("format", "series_uid", "provenance_format")}
        return cls("dicom", DicomProvenance.from_json({**body, "format": d.get("provenance_format")}))


@dataclass(frozen=True)
class LoadedCase:
    """A read case: ``array`` is (C, I, J, K) on ``grid``, float32 (or, read with ``keep_integers``, the file's
    integer type when it stores integers of at most 16 bits without scaling); ``provenance`` says how it was read;
    ``dicom_files``: for a DICOM series, its files in slice order (what DICOM outputs reference)."""

    case_id: str
    array: np.ndarray
    grid: Grid
    input_sha256: str
    provenance: InputProvenance = field(default_factory=InputProvenance)
    files: tuple[Path, ...] = ()
    dicom_files: tuple[Path, ...] = ()


def _channel_pattern(channels: tuple[str, ...]) -> re.Pattern[str]:
    names = "|".join(re.escape(c) for c in channels)
    return re.compile(rf"^(?P<case>.+?)[-_](?P<chan>{names}|\d{{4}})$")


def _is_dicom_dir(path: Path) -> bool:
    return is_dicom_folder(path)


def collect_inputs(paths: list[Path], channels: tuple[str, ...]) -> list[InputCase]:
    """Expand files/folders into cases. Multi-channel models need ``<case>-<channel>.nii.gz`` (or ``_<channel>``,
    or nnU-Net ``_0000``) files for every channel."""
    files: list[Path] = []
    cases: list[InputCase] = []
    notes: dict[Path, str] = {}
    for p in paths:
        if p.is_dir():
            nifti = sorted(f for f in p.iterdir() if f.is_file() and is_nifti_path(f))
            labels = [f for f in nifti if is_label_file(f)]
            images = [f for f in nifti if f not in labels]
            if labels and images:
                for f in images:
                    notes[f] = (f"image {f.name}; label file(s) {', '.join(x.name for x in labels)} "
                                "not segmented")
            if labels and not images:
                raise InputError(f"folder holds only label files ({', '.join(x.name for x in labels)}), "
                                 "no image to segment", path=p)
            if images:
                files += images
            elif _is_dicom_dir(p):
                cases.append(InputCase(case_id="", dicom_dir=p))
            else:
                raise InputError("folder holds no NIfTI files and no DICOM series", path=p)
        elif p.exists() or p.is_symlink():
            files.append(p)
        else:
            raise InputError("input not found", path=p)
    if len(channels) == 1:
        cases += [InputCase(cid, (f,), note=notes.get(f)) for f, cid in zip(files, _single_case_ids(files),
                                                                             strict=True)]
    else:
        cases += _group_channels(files, channels)
    return cases


#: Label-file names of the known layouts: KiTS ``segmentation.nii.gz``, BraTS/others ``*_seg`` / ``*-seg``.
LABEL_STEMS = ("segmentation", "seg", "label", "labels", "mask")


def is_label_file(path: Path) -> bool:
    """Is this NIfTI file a label map by the conventions of the known dataset layouts (KiTS
    ``segmentation.nii.gz``, BraTS ``*-seg.nii.gz``, ``*_seg``, anything in an nnU-Net/MSD ``labelsTr`` folder)?"""
    stem = case_id_from_path(path).lower()
    if path.parent.name in ("labelsTr", "labelsTs"):
        return True
    return stem in LABEL_STEMS or stem.endswith(("_seg", "-seg", "_segmentation", "-segmentation"))


#: File names that say nothing about the case (KiTS: ``case_00012/imaging.nii.gz``): the folder names it.
GENERIC_NAMES = ("imaging", "image", "img")


def _single_case_id(path: Path) -> str:
    """The case id of a one-channel input: the file name without extension, or for layouts that put a generic
    ``imaging.nii.gz`` in a per-case folder, that folder's name."""
    stem = case_id_from_path(path)
    return path.parent.name if stem in GENERIC_NAMES and path.parent.name else stem


def _single_case_ids(files: list[Path]) -> list[str]:
    """Case ids of one-channel inputs. nnU-Net names a case's only channel ``<case>_0000``: that suffix is dropped
    (so masks are ``<case>.nii.gz``, as nnU-Net writes them and as ``evaluate`` matches them against ``labelsTs``),
    unless two inputs would then share an id."""
    ids = [_single_case_id(f) for f in files]
    stripped = [i[:-5] if len(i) > 5 and i.endswith("_0000") else i for i in ids]
    taken = Counter(stripped)
    return [s if taken[s] == 1 else i for i, s in zip(ids, stripped, strict=True)]


def _group_channels(files: list[Path], channels: tuple[str, ...]) -> list[InputCase]:
    pattern = _channel_pattern(channels)
    groups: dict[str, dict[int, Path]] = {}
    for f in files:
        m = pattern.match(case_id_from_path(f))
        if not m:
            raise InputError(
                f"cannot tell which channel this file is; expected a name ending in one of {list(channels)}",
                path=f,
            )
        chan = m.group("chan")
        index = int(chan) if chan.isdigit() else channels.index(chan)
        groups.setdefault(m.group("case"), {})[index] = f
    out = []
    for case_id, by_index in sorted(groups.items()):
        missing = [channels[i] for i in range(len(channels)) if i not in by_index]
        if missing:
            raise InputError(f"case {case_id}: missing channels {missing}", path=next(iter(by_index.values())).parent)
        out.append(InputCase(case_id, tuple(by_index[i] for i in range(len(channels)))))
    return out


def load_case(case: InputCase, n_channels: int, dicom_options: DicomOptions | None = None, *,
              keep_integers: bool = False) -> LoadedCase:
    """Read and validate one case. ``keep_integers``: NIfTI voxels stored as integers of at most 16 bits without
    scaling stay in that type (exact, and half or a quarter of float32's memory; preprocessing converts slab by
    slab); otherwise float32."""
    if case.dicom_dir is not None:
        return _load_dicom(case, n_channels, dicom_options or DicomOptions())
    arrays, grid, transform = [], None, None
    for f in case.files:
        data, info = load_nifti(f, allow_4d=n_channels > 1 and len(case.files) == 1,
                                dtype=_stored_integer_type(f) if keep_integers else np.float32)
        g = Grid((info.shape[0], info.shape[1], info.shape[2]), info.affine)
        if grid is None:
            grid, transform = g, info.transform_record()
        else:
            require_same_grid(g, grid, f, what=f"channel grid (vs {case.files[0].name})")
        arrays += [data] if data.ndim == 3 else [data[..., c] for c in range(data.shape[3])]
    if grid is None:
        raise InputError("case has no image files", path=case.case_id)
    if len(arrays) != n_channels:
        raise InputError(f"{len(arrays)} channels, the model expects {n_channels}", path=case.files[0])
    if len({a.dtype for a in arrays}) > 1:
        arrays = [a.astype(np.float32, copy=False) for a in arrays]
    # one channel: a view, not a second copy of the volume
    stacked = arrays[0][None] if len(arrays) == 1 else np.stack(arrays)
    return LoadedCase(case.case_id, stacked, grid, sha256_files(list(case.files)),
                      InputProvenance(spatial_transform=SpatialTransform.of(transform)), case.files)


def _stored_integer_type(path: Path) -> type:
    """The integer type a NIfTI file stores its voxels in when that type has at most 16 bits and no scaling
    applies (reading it as is is exact), else float32. The header is validated first (a broken file is an
    :class:`InputError` naming it)."""
    inspect_nifti(path)
    img: Any = nib.load(str(path))
    dtype = np.dtype(img.get_data_dtype())
    # nibabel keeps the scaling on the array proxy (the loaded header's copy is cleared)
    unscaled = float(img.dataobj.slope) == 1.0 and float(img.dataobj.inter) == 0.0
    if unscaled and np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2:
        return dtype.newbyteorder("=").type
    return np.float32


def ct_intensity_check(case: LoadedCase, *, strict: bool = True) -> HuCheck:
    """Does a case given to a CT model look like CT in Hounsfield units (:func:`medpipe.io.intensity.check_ct_hu`,
    the one rule)? Returns the statistics it judged by; refuses (``strict``) when it does not."""
    check = check_ct_hu(case.array[0], case.provenance.modality)
    if check.problem and strict:
        where = case.files[0] if case.files else case.case_id
        raise InputError(
            f"does not look like CT in Hounsfield units ({check.describe()}): {check.problem}",
            path=where, hint="the model expects HU; pass --allow-non-hu to segment it anyway",
        )
    return check


def _load_dicom(case: InputCase, n_channels: int, options: DicomOptions) -> LoadedCase:
    folder = Path(case.dicom_dir or "")
    vol = read_dicom_volume(folder, options)
    if n_channels != 1:
        raise InputError(f"a DICOM series gives 1 channel, the model expects {n_channels}", path=folder)
    arr = np.asarray(vol.array, dtype=np.float32)
    grid = Grid((arr.shape[0], arr.shape[1], arr.shape[2]), np.asarray(vol.affine, dtype=float))
    digest = hashlib.sha256(arr.tobytes() + grid.affine.tobytes()).hexdigest()

    # Named like `medpipe convert` names it: series label + description, never patient data or folder names.
    case_id = case.case_id or output_stem(vol.label or str(vol.series_number or 0), vol.description)
    return LoadedCase(case_id, arr[None], grid, digest, InputProvenance("dicom", vol.provenance),
                      dicom_files=vol.source_files)
