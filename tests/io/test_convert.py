"""medpipe convert (library call): NIfTI + sidecar per volume, names, failures, the geometry contract."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medpipe.errors import DicomError
from medpipe.io.dicom import read_dicom_volume
from medpipe.io.dicom.convert import convert_dicom
from medpipe.io.dicom.naming import output_stem
from medpipe.io.dicom.options import DicomOptions
from tests.dicom_factory import write_series


def test_single_series_round_trip(tmp_path):
    series = write_series(tmp_path / "in", intercept=-1024.0, description="Abdomen 3.0 B30f")
    result = convert_dicom(series.folder, tmp_path / "out")
    assert result.ok and len(result.written) == 1
    (out,) = result.written
    assert out.nifti.name == "series3_Abdomen_3_0_B30f.nii.gz"
    assert out.sidecar.name == "series3_Abdomen_3_0_B30f.json"
    img = nib.load(out.nifti)
    assert img.get_data_dtype() == np.int16 and out.dtype == "int16"
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), series.expected_array())
    np.testing.assert_allclose(img.affine, series.expected_affine(), atol=1e-4)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)
    sidecar = json.loads(out.sidecar.read_text())
    assert sidecar["source"]["series_uid"] == series.series_uid
    assert sidecar["nifti"] == out.nifti.name
    assert sidecar["repairs"] == []
    assert all(v == "ok" for v in sidecar["checks"].values())
    assert sidecar["geometry"]["shape"] == [16, 12, 8]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([out.nifti.name, out.sidecar.name])


def test_float_output_when_values_are_not_integers(tmp_path):
    series = write_series(tmp_path / "in", slope=0.25, intercept=-3.0)
    (out,) = convert_dicom(series.folder, tmp_path / "out", compress=False).written
    assert out.nifti.suffix == ".nii" and out.dtype == "float32"
    np.testing.assert_allclose(np.asanyarray(nib.load(out.nifti).dataobj), series.expected_array(), rtol=1e-6)


def test_several_series_all_converted_or_one_picked(tmp_path):
    write_series(tmp_path / "in" / "a", series_number=3, description="soft")
    write_series(tmp_path / "in" / "b", series_number=12, description="lung", orientation="coronal", seed=1)
    result = convert_dicom(tmp_path / "in", tmp_path / "all")
    assert [w.nifti.name for w in result.written] == ["series3_soft.nii.gz", "series12_lung.nii.gz"]
    picked = convert_dicom(tmp_path / "in", tmp_path / "one", DicomOptions(series=12))
    assert [w.label for w in picked.written] == ["12"]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["series12_lung.json", "series12_lung.nii.gz"]


def test_one_bad_volume_does_not_stop_the_others(tmp_path):
    good = write_series(tmp_path / "in" / "a", series_number=3)
    write_series(tmp_path / "in" / "b", series_number=4, drop=(2,), seed=1)
    result = convert_dicom(tmp_path / "in", tmp_path / "out")
    assert [w.label for w in result.written] == ["3"] and not result.ok
    (failed,) = result.failed
    assert failed.label == "4" and "missing slice" in failed.message
    assert result.to_json()["failed"][0]["label"] == "4"
    vol = read_dicom_volume(good.folder)
    np.testing.assert_array_equal(np.asanyarray(nib.load(result.written[0].nifti).dataobj), vol.array)


def test_picked_bad_series_raises(tmp_path):
    write_series(tmp_path / "in", drop=(2,))
    with pytest.raises(DicomError, match="missing slice"):
        convert_dicom(tmp_path / "in", tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_repairs_are_recorded_in_the_sidecar(tmp_path):
    series = write_series(tmp_path / "in", tilt_mm_per_slice=0.8, dz_list=[2.5, 2.5, 2.5, 5.0, 2.5, 2.5, 2.5])
    with pytest.raises(DicomError, match="--allow-tilt --allow-uneven"):
        convert_dicom(series.folder, tmp_path / "out")
    (out,) = convert_dicom(series.folder, tmp_path / "out", DicomOptions(allow_tilt=True, allow_uneven=True)).written
    sidecar = json.loads(out.sidecar.read_text())
    assert [r["repair"] for r in sidecar["repairs"]] == ["detilt", "equalise"]
    assert "gantry tilt" in sidecar["repairs"][0]["reason"]
    assert out.repairs == ("detilt", "equalise") and out.dtype == "float32"
    assert sidecar["checks"]["slice positions along the normal (no gantry tilt)"].startswith("FAILED")
    assert nib.load(out.nifti).shape == (16, 12 + 7, 9)  # 20 mm at 2.5 mm


def test_output_names_are_file_system_safe():
    assert output_stem("3", "T1 / MPRAGE (sag) *new*") == "series3_T1_MPRAGE_sag_new"
    assert output_stem("3-2", "") == "series3-2"
    assert output_stem("7", "../../etc/passwd") == "series7_etc_passwd"
    assert len(output_stem("1", "x" * 300)) <= 70


def test_render_convert_lists_written_and_failed(tmp_path):
    from rich.console import Console

    from medpipe.cli.render import render_convert

    write_series(tmp_path / "in" / "a", series_number=3, description="body")
    write_series(tmp_path / "in" / "b", series_number=4, drop=(2,), seed=1)
    (tmp_path / "in" / "x.txt").write_text("x")
    console = Console(record=True, width=200)
    console.print(render_convert(convert_dicom(tmp_path / "in", tmp_path / "out")))
    text = console.export_text()
    assert "series3_body.nii.gz" in text and "16x12x8" in text and "int16" in text
    assert "series 4 not converted: " in text and "missing slice" in text and "1 not DICOM" in text
