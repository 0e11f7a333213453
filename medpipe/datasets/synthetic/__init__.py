"""Deterministic synthetic sample data: a KiTS-style CT set, a BraTS-2023-style MRI set and a CT classification set
(tumour / no tumour, :mod:`medpipe.datasets.synthetic.cls`).

Both sets are phantoms painted in patient coordinates (RAS+ millimetres relative to the body or brain centre)
and then sampled on deliberately awkward grids (slice-axis-first KiTS layout, LPS, non-zero origins), so that
geometry bugs show up. Arrays are in the file's voxel order (I, J, K). The same ``seed`` gives byte-identical
``.nii.gz`` files: the NIfTI bytes are built in memory and gzip-compressed with ``mtime=0`` and no file name.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medpipe.datasets.synthetic.cls import CLS_CLASSES, CLS_LABELS, ClsCase, make_cls_case
from medpipe.datasets.synthetic.ct import CT_TISSUES, KITS_LABELS, CtCase, make_ct_case
from medpipe.datasets.synthetic.mri import BRATS_LABELS, BRATS_MODALITIES, MRI_TISSUES, MriCase, make_mri_case
from medpipe.errors import MedpipeError
from medpipe.io.atomic import ensure_writable_dir, write_bytes_atomic
from medpipe.io.nifti import nifti_image

__all__ = ["BRATS_LABELS", "BRATS_MODALITIES", "CLS_CLASSES", "CLS_LABELS", "CT_TISSUES", "KITS_LABELS", "MRI_TISSUES",
           "ClsCase", "CtCase", "MriCase", "SampleSummary", "generate_sample_data", "make_cls_case", "make_ct_case",
           "make_mri_case", "nifti_gz_bytes"]

MAX_CASES = 99999
_SCL_SLOPE_OFFSET = 112  # byte offset of scl_slope (then scl_inter) in the NIfTI-1 header


@dataclass(frozen=True)
class SampleSummary:
    """What :func:`generate_sample_data` wrote (paths are under ``out_dir``)."""

    out_dir: Path
    seed: int
    kits_dir: Path
    brats_dir: Path
    ct_case_ids: tuple[str, ...]
    mri_case_ids: tuple[str, ...]
    files: tuple[Path, ...]
    total_bytes: int
    cls_dir: Path | None = None
    cls_case_ids: tuple[str, ...] = ()



def nifti_gz_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """Reproducible ``.nii.gz`` bytes of ``data`` (I, J, K), stored in its own dtype with slope 1 / intercept 0,
    qform = sform = ``affine`` (code 1), mm units, empty ``descrip``; gzip with ``mtime=0`` and no file name."""
    img = nifti_image(data, affine, "")
    header = img.header
    payload = bytearray(img.to_bytes())
    # nibabel writes NaN (= "no scaling") for unscaled data; state slope 1 / intercept 0 explicitly instead.
    struct.pack_into(f"{header.endianness}ff", payload, _SCL_SLOPE_OFFSET, 1.0, 0.0)
    return gzip.compress(bytes(payload), compresslevel=6, mtime=0)


def _check_args(seed: int, n_ct: int, n_mri: int, n_cls: int = 0) -> None:
    """Refuse seeds and case counts the generator cannot honour."""
    for name, value, top in (("seed", seed, 2**63 - 1), ("n_ct", n_ct, MAX_CASES), ("n_mri", n_mri, MAX_CASES),
                             ("n_cls", n_cls, MAX_CASES)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value <= top:
            raise MedpipeError(f"{name} must be an integer in 0..{top}, found {value!r}")


def generate_sample_data(out_dir: Path, seed: int = 0, *, n_ct: int = 12, n_mri: int = 10,
                         n_cls: int = 200) -> SampleSummary:
    """Write ``n_ct`` KiTS-style CT cases, ``n_mri`` BraTS-2023-style MRI cases and ``n_cls`` classification CT
    cases under ``out_dir``.

    Layout: ``kits/case_NNNNN/{imaging,segmentation}.nii.gz``,
    ``brats/BraTS-GLI-NNNNN-000/BraTS-GLI-NNNNN-000-{t1n,t1c,t2w,t2f,seg}.nii.gz`` and
    ``cls/cls_NNNNN/{imaging,segmentation}.nii.gz`` plus ``cls/labels.csv`` (``case,label``: no_tumor | tumor).

    Same seed, same bytes. Existing files of the same names are replaced atomically; other files are left alone.
    Raises :class:`~medpipe.errors.OutputError` naming the folder when it cannot be created or written.
    """
    _check_args(seed, n_ct, n_mri, n_cls)
    out_dir = ensure_writable_dir(Path(out_dir))
    kits_dir, brats_dir = out_dir / "kits", out_dir / "brats"
    files: list[Path] = []
    ct_ids, mri_ids = [], []
    for i in range(n_ct):
        ct = make_ct_case(seed, i)
        ct_ids.append(ct.case_id)
        for name, data in (("imaging", ct.hu), ("segmentation", ct.labels)):
            files.append(kits_dir / ct.case_id / f"{name}.nii.gz")
            write_bytes_atomic(files[-1], nifti_gz_bytes(data, ct.affine))  # creates the case folder
    for i in range(n_mri):
        mri = make_mri_case(seed, i)
        mri_ids.append(mri.case_id)
        for suffix, data in [*mri.images.items(), ("seg", mri.labels)]:
            files.append(brats_dir / mri.case_id / f"{mri.case_id}-{suffix}.nii.gz")
            write_bytes_atomic(files[-1], nifti_gz_bytes(data, mri.affine))
    cls_dir = out_dir / "cls"
    cls_ids, rows = [], ["case,label"]
    for i in range(n_cls):
        case = make_cls_case(seed, i)
        cls_ids.append(case.case_id)
        rows.append(f"{case.case_id},{CLS_CLASSES[int(case.tumor)]}")
        for name, data in (("imaging", case.hu), ("segmentation", case.labels)):
            files.append(cls_dir / case.case_id / f"{name}.nii.gz")
            write_bytes_atomic(files[-1], nifti_gz_bytes(data, case.affine))
    if n_cls:
        files.append(cls_dir / "labels.csv")
        write_bytes_atomic(files[-1], ("\n".join(rows) + "\n").encode())
    total = sum(f.stat().st_size for f in files)
    return SampleSummary(out_dir, int(seed), kits_dir, brats_dir, tuple(ct_ids), tuple(mri_ids), tuple(files), total,
                         cls_dir if n_cls else None, tuple(cls_ids))
