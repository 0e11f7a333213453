"""BAD-INPUTS N9 (lying header, gzip bomb: refused from the header before allocation) and L3 (non-integer label
values: rounded and recorded within 1e-3, refused beyond), through the library and the CLI."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medpipe.cli import app
from medpipe.errors import InputError
from medpipe.io.nifti import inspect_nifti, load_label, load_nifti
from tests.conftest import make_affine, save_nifti

runner = CliRunner()


def _lying_gz(path: Path, shape: tuple[int, ...], dtype: type, payload_bytes: int) -> Path:
    """A .nii.gz whose header declares ``shape`` x ``dtype`` but whose gzip stream holds ``payload_bytes``."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_sform(np.eye(4), code=1)
    raw = hdr.binaryblock + b"\0" * (int(hdr.get_data_offset()) - len(hdr.binaryblock)) + b"\0" * payload_bytes
    path.write_bytes(gzip.compress(raw))
    return path


def test_header_declaring_68_gb_in_a_1_kb_file_is_refused_before_allocation(tmp_path):
    path = _lying_gz(tmp_path / "huge.nii.gz", (2040, 2040, 2040), np.float64, 512)
    assert path.stat().st_size < 2048
    t0 = time.perf_counter()
    with pytest.raises(InputError) as exc:
        load_nifti(path)
    assert time.perf_counter() - t0 < 5
    msg = str(exc.value)
    assert "huge.nii.gz" in msg and "(2040, 2040, 2040)" in msg and "float64" in msg
    assert "memory" in msg or "gzip stream holds" in msg


def test_gzip_bomb_whose_stream_is_shorter_than_the_header_says_is_refused(tmp_path):
    # header: 512 x 512 x 256 int16 = 128 MiB; stream: 4 MiB of zeros (about 4 KiB compressed)
    path = _lying_gz(tmp_path / "bomb.nii.gz", (512, 512, 256), np.int16, 4 * 2**20)
    with pytest.raises(InputError, match=r"gzip stream holds 4194\d+ bytes, the header declares 134\d+"):
        inspect_nifti(path)


def test_a_large_ratio_file_that_holds_its_data_is_accepted(tmp_path):
    path = tmp_path / "zeros.nii.gz"
    save_nifti(path, np.zeros((128, 128, 64), np.int16), make_affine())
    assert path.stat().st_size * 50 < 128 * 128 * 64 * 2  # the stream check runs, and passes
    assert inspect_nifti(path).shape == (128, 128, 64)


def test_cli_info_on_a_lying_header_is_one_line(tmp_path):
    path = _lying_gz(tmp_path / "huge.nii.gz", (2040, 2040, 2040), np.float64, 512)
    res = runner.invoke(app, ["info", "--json", str(path)])
    assert res.exit_code == 0 and res.exception is None, res.output  # info reports the problem, no traceback
    assert "memory is available" in res.output and "(2040, 2040, 2040) float64" in res.output


def _float_label(path: Path, values: dict[tuple[int, int, int], float]) -> Path:
    lab = np.zeros((6, 5, 4), np.float32)
    for idx, v in values.items():
        lab[idx] = v
    return save_nifti(path, lab, make_affine())


def test_near_integer_label_values_are_rounded_and_recorded(tmp_path):
    path = _float_label(tmp_path / "lab.nii.gz", {(1, 1, 1): 0.9999, (2, 2, 2): 2.00007, (3, 3, 3): 1.0})
    notes: list[str] = []
    labels, _ = load_label(path, {0, 1, 2}, notes)
    assert labels[1, 1, 1] == 1 and labels[2, 2, 2] == 2 and labels.dtype == np.int32
    assert len(notes) == 1 and notes[0].startswith("2 non-integer label values rounded")
    assert "7e-05" in notes[0] or "0.0001" in notes[0]


def test_label_values_beyond_the_tolerance_are_refused(tmp_path):
    path = _float_label(tmp_path / "lab.nii.gz", {(1, 1, 1): 1.3})
    with pytest.raises(InputError, match=r"lab.nii.gz: non-integer label values \(max deviation 0.3"):
        load_label(path, {0, 1, 2})


def test_dataset_check_reports_the_rounding_as_a_warning(tmp_path):
    from medpipe.datasets import check_dataset
    from tests.datasets.test_layouts import make_layout

    root = make_layout(tmp_path / "kits", "kits", n=3)
    seg = root / "case_00001" / "segmentation.nii.gz"
    lab = np.asanyarray(nib.load(seg).dataobj).astype(np.float32)
    lab[lab == 1] = 0.9999
    save_nifti(seg, lab, nib.load(seg).affine)
    report = check_dataset(root, "kits", labels={0: "bg", 1: "kidney", 2: "tumor"})
    assert not report.errors
    (w,) = [i for i in report.warnings if i.check == "labels"]
    assert w.case_id == "case_00001" and "rounded" in w.message


@pytest.mark.parametrize("dtype", [np.complex64, np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])])
def test_complex_and_rgb_voxels_are_refused_by_name(tmp_path, dtype):
    path = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), dtype), make_affine()), str(path))
    with pytest.raises(InputError, match=r"odd.nii.gz: (complex|RGB / structured) voxels"):
        load_nifti(path)


def test_big_endian_and_int64_images_read_correctly(tmp_path):
    data = np.arange(4 * 4 * 4, dtype=">i2").reshape(4, 4, 4)
    path = tmp_path / "be.nii.gz"
    nib.save(nib.Nifti1Image(data, make_affine()), str(path))
    loaded, _ = load_nifti(path)
    np.testing.assert_array_equal(loaded, data.astype(np.float32))
