from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medpipe.errors import InputError
from medpipe.io.nifti import load_label, load_nifti, mask_image
from tests.conftest import make_affine, save_nifti


def _img(tmp_path: Path, data: np.ndarray, name: str = "x.nii.gz", affine: np.ndarray | None = None) -> Path:
    return save_nifti(tmp_path / name, data, make_affine(spacing=(0.8, 0.8, 2.5)) if affine is None else affine)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _patch(path: Path, offset: int, fmt: str, *values: float) -> None:
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, offset, *values)
    path.write_bytes(bytes(raw))


def _broken_link(path: Path) -> Path:
    path.symlink_to(path.parent / "gone.nii.gz")
    return path


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads a chmod 000 file")
def test_unreadable_file_names_the_errno_text(tmp_path: Path) -> None:
    path = _img(tmp_path, np.zeros((4, 4, 4), np.int16))
    path.chmod(0)
    try:
        with pytest.raises(InputError, match="cannot read file: Permission denied"):
            load_nifti(path)
    finally:
        path.chmod(0o644)


def test_loads_valid_volume_and_reports_spacing(tmp_path: Path) -> None:
    p = _img(tmp_path, np.zeros((4, 5, 6), np.int16))
    data, info = load_nifti(p)
    assert data.dtype == np.float32 and data.shape == (4, 5, 6)
    assert info.spacing_mm == pytest.approx((0.8, 0.8, 2.5)) and info.orientation == "RAS"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: d / "missing.nii.gz", "file not found"),
        (lambda d: _write(d / "empty.nii.gz", b""), "empty file"),
        (lambda d: _write(d / "text.nii", b"hello, not an image"), "not a readable NIfTI"),
        (lambda d: _write(d / "fake.nii.gz", b"plain"), "not gzip"),
        (lambda d: d, "is a folder"),
        (lambda d: _broken_link(d / "link.nii.gz"), "broken symbolic link"),
    ],
)
def test_bad_files_name_path_and_problem(tmp_path: Path, make, match: str) -> None:
    path = make(tmp_path)
    with pytest.raises(InputError, match=match) as info:
        load_nifti(path)
    assert str(path) in str(info.value)


def test_2d_and_5d_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="2D image"):
        load_nifti(_img(tmp_path, np.zeros((8, 8), np.float32), "a.nii.gz"))
    with pytest.raises(InputError, match="5D image"):
        load_nifti(_img(tmp_path, np.zeros((4, 4, 4, 1, 2), np.float32), "b.nii.gz"))
    with pytest.raises(InputError, match="4D image"):
        load_nifti(_img(tmp_path, np.zeros((4, 4, 4, 2), np.float32), "c.nii.gz"))
    data, _ = load_nifti(_img(tmp_path, np.zeros((4, 4, 4, 2), np.float32), "d.nii.gz"), allow_4d=True)
    assert data.shape == (4, 4, 4, 2)


def test_nan_inf_counted(tmp_path: Path) -> None:
    a = np.zeros((4, 4, 4), np.float32)
    a[0, 0, 0], a[1, 1, 1], a[2, 2, 2] = np.nan, np.inf, -np.inf
    with pytest.raises(InputError, match=r"1 NaN and 2 Inf voxels"):
        load_nifti(_img(tmp_path, a))


def test_zero_spacing_and_no_transform(tmp_path: Path) -> None:
    z = _img(tmp_path, np.zeros((4, 4, 4), np.int16), "z.nii", affine=np.eye(4))
    _patch(z, 84, "<f", 0.0)  # pixdim[2] = 0 on disk (nibabel would fix it on save)
    with pytest.raises(InputError, match="zero or negative voxel spacing"):
        load_nifti(z)
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, str(tmp_path / "n.nii"))
    with pytest.raises(InputError, match="no valid spatial transform"):
        load_nifti(tmp_path / "n.nii")


def test_truncated_files(tmp_path: Path) -> None:
    p = _img(tmp_path, np.ones((16, 16, 16), np.int16), "t.nii")
    p.write_bytes(p.read_bytes()[:2000])
    with pytest.raises(InputError, match="truncated file: 2000 bytes"):
        load_nifti(p)
    g = _img(tmp_path, np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32), "t.nii.gz")
    g.write_bytes(g.read_bytes()[:3000])
    with pytest.raises(InputError, match=r"cannot read voxel data|not a readable"):
        load_nifti(g)


def test_lying_header_is_refused_before_allocation(tmp_path: Path) -> None:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4096, 4096, 4096))
    hdr.set_data_dtype(np.int16)
    hdr.set_qform(np.eye(4), code=1)
    raw = hdr.binaryblock + b"\0" * 4 + b"\0" * 64
    (tmp_path / "bomb.nii.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(InputError, match="implausible size"):
        load_nifti(tmp_path / "bomb.nii.gz")


def test_sheared_affine_refused(tmp_path: Path) -> None:
    aff = np.eye(4)
    aff[1, 2] = 0.4
    with pytest.raises(InputError, match="sheared"):
        load_nifti(_img(tmp_path, np.zeros((4, 4, 4), np.int16), affine=aff))


def test_labels_values_scaling_and_rounding(tmp_path: Path) -> None:
    lab = np.zeros((4, 4, 4), np.uint8)
    lab[0, 0, 0] = 7
    with pytest.raises(InputError, match=r"label values \[7\] are not in the label map \[0, 1, 2\]"):
        load_label(_img(tmp_path, lab, "l.nii.gz"), {0, 1, 2})
    f = np.zeros((4, 4, 4), np.float32)
    f[1, 1, 1] = 0.5
    with pytest.raises(InputError, match="non-integer label values"):
        load_label(_img(tmp_path, f, "f.nii.gz"))
    scaled = _img(tmp_path, np.zeros((4, 4, 4), np.int16), "s.nii")
    _patch(scaled, 112, "<ff", 2.0, 8.0)  # scl_slope, scl_inter
    with pytest.raises(InputError, match="intensity scaling"):
        load_label(scaled)


def test_mask_image_dtype_and_header(tmp_path: Path) -> None:
    aff = make_affine((1, 0, 2), (-1, 1, 1), (0.7, 0.9, 3.0), (10, 0, 5))
    img = mask_image(np.full((3, 3, 3), 300), aff)
    assert img.get_data_dtype() == np.uint16
    nib.save(img, str(tmp_path / "m.nii.gz"))
    back = nib.load(str(tmp_path / "m.nii.gz"))
    assert np.allclose(back.get_qform(), aff, atol=1e-5) and np.allclose(back.get_sform(), aff)
    assert back.header["descrip"].tobytes().startswith(b"medpipe")


def test_atomic_outputs_get_normal_permissions(tmp_path: Path) -> None:
    import os

    from medpipe.io.atomic import write_text_atomic

    write_text_atomic(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask
