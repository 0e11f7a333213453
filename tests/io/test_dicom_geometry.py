"""Slice order, affine and geometry checks on synthetic series (known answers + SimpleITK as an oracle)."""

from __future__ import annotations

import numpy as np
import pytest

from medpipe.errors import DicomError
from medpipe.io.dicom import read_dicom_volume
from medpipe.io.dicom.options import DicomOptions
from tests.dicom_factory import oblique_iop, sitk_sorted_files, sitk_volume, write_series


def _world(affine: np.ndarray, ijk: tuple[float, float, float]) -> np.ndarray:
    return (affine @ np.array([*ijk, 1.0]))[:3]


def _lps_to_ras(p: np.ndarray) -> np.ndarray:
    return np.asarray(p) * np.array([-1.0, -1.0, 1.0])


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal", "oblique"])
def test_clean_series_matches_known_answer_and_simpleitk(tmp_path, orientation):
    iop = oblique_iop() if orientation == "oblique" else orientation
    series = write_series(tmp_path / "in", orientation=iop)
    vol = read_dicom_volume(series.folder)
    assert vol.array.dtype == np.float32
    assert vol.array.shape == (16, 12, 8)
    np.testing.assert_array_equal(vol.array, series.expected_array())
    np.testing.assert_allclose(vol.affine, series.expected_affine(), atol=1e-4)
    # every slice's voxel (0, 0) lies at that file's ImagePositionPatient (RAS)
    for k, ipp in enumerate(series.positions):
        np.testing.assert_allclose(_world(vol.affine, (0, 0, k)), _lps_to_ras(ipp), atol=1e-4)
    # column index runs along the IOP row direction with the column spacing (0.6 mm), rows with 0.8 mm
    step_i = _world(vol.affine, (1, 0, 0)) - _world(vol.affine, (0, 0, 0))
    np.testing.assert_allclose(step_i, _lps_to_ras(np.asarray(series.iop[:3]) * 0.6), atol=1e-6)
    ref, ref_affine = sitk_volume(sitk_sorted_files(series.folder))
    np.testing.assert_array_equal(vol.array, ref)
    np.testing.assert_allclose(vol.affine, ref_affine, atol=1e-4)


@pytest.mark.parametrize("order", ["descending", "shuffled", "missing"])
def test_instance_number_never_decides_order(tmp_path, order):
    ref = read_dicom_volume(write_series(tmp_path / "ref").folder)
    vol = read_dicom_volume(write_series(tmp_path / order, instance_order=order, seed=5).folder)
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-6)
    notes = " ".join(vol.provenance.to_json()["decisions"])
    expected = {"descending": "decreases", "shuffled": "not spatial", "missing": "InstanceNumber missing"}[order]
    assert expected in notes


def test_patient_position_does_not_change_affine(tmp_path):
    hfs = read_dicom_volume(write_series(tmp_path / "hfs").folder)

    def prone(ds, k):
        ds.PatientPosition = "FFP"

    ffp = read_dicom_volume(write_series(tmp_path / "ffp", edit=prone).folder)
    np.testing.assert_array_equal(ffp.affine, hfs.affine)
    assert any("FFP" in d for d in ffp.provenance.to_json()["decisions"])


def test_missing_slice_is_refused_with_numbers(tmp_path):
    series = write_series(tmp_path / "gap", drop=(4,))
    with pytest.raises(DicomError) as err:
        read_dicom_volume(series.folder)
    text = str(err.value)
    assert str(series.folder) in text
    assert "gap of 5.0 mm between slices 4 and 5" in text
    assert "expected 2.5 mm" in text
    assert "--allow-uneven" in text


def test_missing_slice_repair_interpolates_and_records(tmp_path):
    series = write_series(tmp_path / "gap", drop=(4,))
    vol = read_dicom_volume(series.folder, DicomOptions(allow_uneven=True))
    assert vol.array.shape == (16, 12, 8)
    np.testing.assert_allclose(np.linalg.norm(vol.affine[:3, 2]), 2.5, atol=1e-6)
    # the missing slice 4 is the mean of slices 3 and 5; every kept slice is unchanged
    full = 100 * np.arange(8)[None, None, :] + series.expected_array()[:, :, :1]
    np.testing.assert_allclose(vol.array, full, atol=1e-4)
    (record,) = vol.provenance.to_json()["repairs"]
    assert record["repair"] == "equalise" and record["slices_before"] == 7 and record["slices_after"] == 8
    assert not vol.integer_valued


def test_uneven_spacing_refused_then_equalised(tmp_path):
    gaps = [2.5, 2.5, 2.5, 2.5, 4.0, 4.0, 4.0]
    series = write_series(tmp_path / "uneven", dz_list=gaps)
    with pytest.raises(DicomError) as err:
        read_dicom_volume(series.folder)
    assert "uneven slice spacing: gap of 4.0 mm between slices 5 and 6" in str(err.value)
    assert "expected 2.5 mm (3 of 7 gaps differ)" in str(err.value)
    vol = read_dicom_volume(series.folder, DicomOptions(allow_uneven=True))
    # smallest gap 2.5 mm over 22 mm -> 10 slices of 22/9 mm; the last slice keeps its world position
    assert vol.array.shape[2] == 10
    np.testing.assert_allclose(np.linalg.norm(vol.affine[:3, 2]), 22 / 9, atol=1e-6)
    np.testing.assert_allclose(_world(vol.affine, (0, 0, 9)), _lps_to_ras(series.positions[-1]), atol=1e-4)
    source_mm = np.concatenate([[0.0], np.cumsum(gaps)])
    slice_value = 100 * np.interp(np.arange(10) * 22 / 9, source_mm, np.arange(8))
    expected = series.expected_array()[:, :, :1] + slice_value[None, None, :]
    np.testing.assert_allclose(vol.array, expected, atol=1e-3)


def test_duplicate_positions_refused_naming_files(tmp_path):
    series = write_series(tmp_path / "dup", duplicate=3)
    with pytest.raises(DicomError) as err:
        read_dicom_volume(series.folder)
    text = str(err.value)
    assert "duplicate slice positions: 2 images at" in text
    assert series.files[3].name in text and series.files[-1].name in text


def test_gantry_tilt_refused_with_angle(tmp_path):
    series = write_series(tmp_path / "tilt", tilt_mm_per_slice=0.8)
    with pytest.raises(DicomError) as err:
        read_dicom_volume(series.folder)
    angle = np.degrees(np.arctan(0.8 / 2.5))
    assert f"gantry tilt of {angle:.1f} deg" in str(err.value)
    assert "--allow-tilt" in str(err.value)


def test_gantry_tilt_repair_lands_each_pixel_at_its_world_position(tmp_path):
    # each slice moves one row (0.8 mm) along the column direction: an exact, interpolation-free shift
    series = write_series(tmp_path / "tilt", tilt_mm_per_slice=0.8)
    vol = read_dicom_volume(series.folder, DicomOptions(allow_tilt=True))
    assert vol.array.shape == (16, 12 + 7, 8)
    axes = vol.affine[:3, :3] / np.linalg.norm(vol.affine[:3, :3], axis=0)
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-6)  # orthogonal grid
    inv = np.linalg.inv(vol.affine)
    stored = series.expected_array()
    for k in (0, 3, 7):
        for i, j in ((0, 0), (5, 7), (15, 11)):
            world = series.positions[k] + i * 0.6 * np.asarray(series.iop[:3]) + j * 0.8 * np.asarray(series.iop[3:])
            idx = (inv @ np.array([*_lps_to_ras(world), 1.0]))[:3]
            np.testing.assert_allclose(idx, np.rint(idx), atol=1e-4)
            a, b, c = (int(v) for v in np.rint(idx))
            assert vol.array[a, b, c] == stored[i, j, k]
    (record,) = vol.provenance.to_json()["repairs"]
    assert record["repair"] == "detilt" and record["plane_after"] == [16, 19]
    assert record["fill_value"] == float(stored.min())


def test_fractional_tilt_is_interpolated_linearly(tmp_path):
    def ramp(k):
        return np.tile(10 * np.arange(12)[:, None], (1, 16))  # value = 10 * row

    series = write_series(tmp_path / "tilt", tilt_mm_per_slice=0.4, values=ramp, n_slices=4)
    vol = read_dicom_volume(series.folder, DicomOptions(allow_tilt=True))
    # slice 1 is shifted by half a row: inside the image the ramp is sampled half-way between rows
    k1 = vol.array[:, :, 1]
    inner = k1[:, 2:10]
    np.testing.assert_allclose(np.diff(inner, axis=1), 10.0, atol=1e-4)
    np.testing.assert_allclose(inner[0, 0] % 10, 5.0, atol=1e-4)


def test_tilt_and_uneven_need_both_flags(tmp_path):
    series = write_series(tmp_path / "both", tilt_mm_per_slice=0.8, drop=(5,))
    with pytest.raises(DicomError) as err:
        read_dicom_volume(series.folder, DicomOptions(allow_tilt=True))
    assert "missing slice" in str(err.value) and "gantry tilt" not in str(err.value)
    vol = read_dicom_volume(series.folder, DicomOptions(allow_tilt=True, allow_uneven=True))
    assert [r["repair"] for r in vol.provenance.to_json()["repairs"]] == ["detilt", "equalise"]


@pytest.mark.parametrize(
    ("tag", "name"),
    [
        ("ImagePositionPatient", "ImagePositionPatient"),
        ("ImageOrientationPatient", "ImageOrientationPatient"),
        ("PixelSpacing", "PixelSpacing"),
    ],
)
def test_missing_geometry_tag_is_refused(tmp_path, tag, name):
    def drop_tag(ds, k):
        if k == 2:
            delattr(ds, tag)

    series = write_series(tmp_path / "missing", edit=drop_tag)
    with pytest.raises(DicomError) as err:
        read_dicom_volume(series.folder)
    assert f"cannot establish geometry: {name} missing or invalid in 1 of 8 images" in str(err.value)
    assert series.files[2].name in str(err.value)


@pytest.mark.parametrize(
    "iop",
    [
        [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # zero vector
        [2.0, 0.0, 0.0, 0.0, 1.0, 0.0],  # not unit length
        [1.0, 0.0, 0.0, 0.6, 0.8, 0.0],  # not orthogonal
    ],
)
def test_invalid_orientation_is_refused(tmp_path, iop):
    def set_iop(ds, k):
        ds.ImageOrientationPatient = iop

    series = write_series(tmp_path / "iop", edit=set_iop)
    with pytest.raises(DicomError, match="invalid ImageOrientationPatient"):
        read_dicom_volume(series.folder)


@pytest.mark.parametrize("n", [1, 2])
def test_two_or_fewer_slices_refused(tmp_path, n):
    series = write_series(tmp_path / "few", n_slices=n)
    with pytest.raises(DicomError, match=f"only {n} image"):
        read_dicom_volume(series.folder)


def test_rows_columns_changing_between_slices(tmp_path):
    series = write_series(tmp_path / "mixed")
    write_series(tmp_path / "mixed", n_slices=1, rows=10, columns=10, series_uid=series.series_uid, seed=9)
    with pytest.raises(DicomError) as err:
        read_dicom_volume(series.folder)
    text = str(err.value)
    assert "2 volumes" in text and "10x10" in text and "mixed orientations or image sizes" in text
    vol = read_dicom_volume(series.folder, DicomOptions(series="3-1"))
    np.testing.assert_array_equal(vol.array, series.expected_array())
    with pytest.raises(DicomError, match="only 1 image"):
        read_dicom_volume(series.folder, DicomOptions(series="3-2"))


def test_untagged_localizer_in_series_is_not_stacked(tmp_path):
    series = write_series(tmp_path / "loc")
    write_series(tmp_path / "loc", n_slices=1, orientation="sagittal", series_uid=series.series_uid, seed=4)
    with pytest.raises(DicomError, match="folder holds 2 volumes"):
        read_dicom_volume(series.folder)
    vol = read_dicom_volume(series.folder, DicomOptions(series="3-1"))
    np.testing.assert_array_equal(vol.array, series.expected_array())
