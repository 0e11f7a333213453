"""medpipe info (library call): headers only, problems listed, JSON for scripts, a rich table for people."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from rich.console import Console

from medpipe.cli.render import render_info
from medpipe.errors import InputError
from medpipe.io.inspect import info
from tests.dicom_factory import write_series


def _text(result) -> str:
    console = Console(record=True, width=200)
    console.print(render_info(result))
    return console.export_text()


def test_dicom_folder_lists_volumes_problems_and_skipped(tmp_path):
    write_series(tmp_path / "in" / "a", series_number=3, description="clean")
    write_series(tmp_path / "in" / "b", series_number=5, description="tilted", tilt_mm_per_slice=0.8, seed=1)
    (tmp_path / "in" / "notes.txt").write_text("hello")
    result = info(tmp_path / "in")
    assert result.kind == "dicom" and result.n_files == 17 and result.skipped == {"not DICOM": 1}
    clean, tilted = result.volumes
    assert clean.size == (16, 12, 8) and clean.problems == () and clean.orientation == "LPS"
    np.testing.assert_allclose(clean.spacing_mm, (0.6, 0.8, 2.5))
    assert clean.plane == "axial" and clean.storage == "Explicit VR Little Endian"
    assert "gantry tilt" in tilted.problems[0] and "--allow-tilt" in tilted.problems[0]
    assert not result.ok
    payload = json.loads(json.dumps(result.to_json()))
    assert payload["volumes"][0]["label"] == "3" and payload["skipped_files"] == {"not DICOM": 1}
    text = _text(result)
    assert "clean" in text and "16x12x8" in text and "gantry tilt" in text and "1 not DICOM" in text


def test_info_reads_no_pixel_data(tmp_path):
    series = write_series(tmp_path / "in")
    for f in series.files:  # cut every file inside its pixel data: headers stay readable
        f.write_bytes(f.read_bytes()[:-200])
    (vol,) = info(series.folder).volumes
    assert vol.size == (16, 12, 8)
    assert vol.problems and "truncated file" in vol.problems[0]


def test_nifti_file(tmp_path):
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7), np.int16), np.diag([2.0, 2.0, 3.0, 1.0])), path)
    result = info(path)
    (vol,) = result.volumes
    assert result.kind == "nifti" and vol.size == (5, 6, 7) and vol.spacing_mm == (2.0, 2.0, 3.0)
    assert vol.orientation == "RAS" and vol.storage == "NIfTI int16"
    assert result.to_json()["volumes"][0]["size"] == [5, 6, 7]
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"")
    (vol,) = info(bad).volumes
    assert "empty file" in vol.problems[0]


def test_info_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        info(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputError, match="expected a NIfTI file"):
        info(tmp_path / "x.txt")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("x")
    with pytest.raises(InputError, match="folder holds no DICOM file"):
        info(tmp_path / "d")
