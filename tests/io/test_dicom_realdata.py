"""Real scanner data (../shared/data/dicom): geometry compared with dcm2niix's references in world
coordinates (both images brought to RAS by axis flips/permutations only), voxels with SimpleITK."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medpipe.errors import DicomError
from medpipe.io.dicom import analyse, read_dicom_volume, scan_folder
from medpipe.io.dicom.convert import convert_dicom
from medpipe.io.dicom.options import DicomOptions
from medpipe.io.dicom.pixels import read_stack
from medpipe.io.geometry import Grid, grid_of, grids_match
from tests.dicom_factory import sitk_sorted_files, sitk_volume

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dicom"
pytestmark = pytest.mark.realdata

#: dcm2niix stores affines as float32: compare voxel centres to this tolerance (mm).
FLOAT32_TOL_MM = 1e-3


def _need(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def _canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.Nifti1Image(array, affine))
    return np.asanyarray(img.dataobj), img.affine


@pytest.mark.parametrize("position", ["HFS", "HFP"])
def test_sagittal_mr_matches_dcm2niix_in_both_patient_positions(position):
    folder = _need("mr-sagittal-positions", position)
    ref = nib.load(_need("mr-sagittal-positions", "ref", f"{position}.nii.gz"))
    vol = read_dicom_volume(folder)
    assert vol.modality == "MR" and vol.array.shape == (256, 256, 35)
    mine, mine_affine = _canonical(vol.array, vol.affine)
    theirs, theirs_affine = _canonical(np.asanyarray(ref.dataobj), ref.affine)
    np.testing.assert_allclose(mine_affine, theirs_affine, atol=FLOAT32_TOL_MM)
    np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_allclose(vol.grid.spacing_mm, (1.015625, 1.015625, 4.8), atol=1e-5)


def test_patient_position_leaves_the_affine_unchanged():
    hfs = read_dicom_volume(_need("mr-sagittal-positions", "HFS"))
    hfp = read_dicom_volume(_need("mr-sagittal-positions", "HFP"))
    np.testing.assert_allclose(hfs.affine, hfp.affine, atol=1e-6)


def test_gantry_tilt_ct_is_refused_with_what_was_found():
    folder = _need("ct-head-gantry-tilt-ge", "series")
    with pytest.raises(DicomError) as err:
        read_dicom_volume(folder)
    text = str(err.value)
    assert "gantry tilt of 18.5 deg" in text and "GantryDetectorTilt 18.5 deg" in text
    assert "gap of 1.081 mm between slices 14 and 15" in text and "expected 4.002 mm" in text
    assert "--allow-tilt --allow-uneven" in text


def test_gantry_tilt_ct_plain_stack_matches_simpleitk_and_dcm2niix_positions():
    folder = _need("ct-head-gantry-tilt-ge", "series")
    header = json.loads(_need("ct-head-gantry-tilt-ge", "ref", "_2.header.json").read_text())
    scan = scan_folder(folder)
    (cand,) = scan.candidates
    geom = analyse(cand)
    stack, _ = read_stack([cand.frames[i] for i in geom.order], folder)
    ref, _ = sitk_volume(sitk_sorted_files(folder))
    np.testing.assert_array_equal(stack.T, ref)
    # dcm2niix's plain stack flips rows: its voxel (0, 0, 0) is our column 0, row 511 of the first slice, and
    # its in-plane axes are ours (row axis negated). Its slice axis is one mean step, so it is not compared.
    sform = np.asarray(header["sform"])
    assert geom.ipp is not None and geom.col_cos is not None and geom.row_cos is not None
    corner_lps = geom.ipp[0] + 511 * 0.4882812 * geom.col_cos
    np.testing.assert_allclose(corner_lps * [-1, -1, 1], sform[:3, 3], atol=FLOAT32_TOL_MM)
    np.testing.assert_allclose(geom.row_cos * 0.4882812 * [-1, -1, 1], sform[:3, 0], atol=FLOAT32_TOL_MM)
    np.testing.assert_allclose(-geom.col_cos * 0.4882812 * [-1, -1, 1], sform[:3, 1], atol=FLOAT32_TOL_MM)


def test_gantry_tilt_ct_repaired_matches_dcm2niix_tilt_and_equalise():
    folder = _need("ct-head-gantry-tilt-ge", "series")
    ref = nib.load(_need("ct-head-gantry-tilt-ge", "ref", "_2_Tilt_Eq_1.nii.gz"))
    vol = read_dicom_volume(folder, DicomOptions(allow_tilt=True, allow_uneven=True))
    assert vol.array.shape == ref.shape == (512, 611, 56)
    mine, mine_affine = _canonical(vol.array, vol.affine)
    theirs, theirs_affine = _canonical(np.asanyarray(ref.dataobj).astype(np.float32), ref.affine)
    np.testing.assert_allclose(mine_affine, theirs_affine, atol=FLOAT32_TOL_MM)  # the same grid
    diff = np.abs(mine - theirs)
    assert float(diff.mean()) < 1.0  # dcm2niix rounds to integers: mean difference below 1 HU
    assert float(np.percentile(diff, 99)) < 1.0
    repairs = [r["repair"] for r in vol.provenance.to_json()["repairs"]]
    assert repairs == ["detilt", "equalise"]
    assert vol.provenance.to_json()["repairs"][1]["spacing_mm"] == pytest.approx(2.6198, abs=1e-3)


def test_jpeg2000_ct_matches_simpleitk_and_its_label_map():
    folder = _need("ct-abdomen-jpeg2000", "series")
    labels = nib.load(_need("ct-abdomen-jpeg2000", "labels.nii.gz"))
    vol = read_dicom_volume(folder)
    ref, ref_affine = sitk_volume(sitk_sorted_files(folder))
    np.testing.assert_array_equal(vol.array, ref)
    np.testing.assert_allclose(vol.affine, ref_affine, atol=1e-4)
    assert vol.provenance.to_json()["source"]["transfer_syntax"] == ["JPEG 2000 Image Compression (Lossless Only)"]
    hu, hu_affine = _canonical(vol.array, vol.affine)
    lab, lab_affine = _canonical(np.asanyarray(labels.dataobj), labels.affine)
    assert grids_match(Grid(hu.shape, hu_affine), Grid(lab.shape, lab_affine))
    # the label map lands on the organs: liver (5) and spleen (1) hold soft-tissue HU, flipped they do not
    assert 40 < hu[lab == 5].mean() < 150 and 40 < hu[lab == 1].mean() < 150
    assert hu[lab[:, ::-1, :] == 5].mean() < 0
    assert float(hu.min()) <= -1000  # RescaleIntercept -1024 applied to unsigned 12-bit data


def test_convert_jpeg2000_ct_writes_the_label_grid(tmp_path):
    folder = _need("ct-abdomen-jpeg2000", "series")
    labels = nib.load(_need("ct-abdomen-jpeg2000", "labels.nii.gz"))
    (out,) = convert_dicom(folder, tmp_path).written
    img = nib.load(out.nifti)
    assert out.dtype == "int16"
    _, a_affine = _canonical(np.asanyarray(img.dataobj), img.affine)
    _, b_affine = _canonical(np.asanyarray(labels.dataobj, dtype=np.uint8), labels.affine)
    np.testing.assert_allclose(a_affine, b_affine, atol=1e-4)
    assert grid_of(img).shape == (512, 512, 20)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("gantrytilting", ["gantry tilt of 14.0 deg", "no GantryDetectorTilt tag"]),
        ("sliceincrement/001", ["missing slice (1): gap of 10.0 mm between slices 3 and 4, expected 5.0 mm"]),
        ("sliceincrement/002", ["gantry tilt of 15.5 deg", "missing slice (1)"]),
        ("notavolume", ["duplicate slice positions: 4 images at 61.5 mm"]),
        ("slicecount", ["only 2 images, a volume needs at least 3"]),
        ("sliceorientation", ["folder holds 2 volumes", "sagittal", "oblique (axial)", "mixed orientations"]),
    ],
)
def test_bad_folders_are_refused_with_reasons(case, expected):
    folder = _need("bad", case)
    with pytest.raises(DicomError) as err:
        read_dicom_volume(folder)
    text = str(err.value)
    assert str(folder) in text
    for fragment in expected:
        assert fragment in text


def test_bad_tilt_folder_can_be_repaired_on_request():
    vol = read_dicom_volume(_need("bad", "gantrytilting"), DicomOptions(allow_tilt=True))
    axes = vol.affine[:3, :3] / np.linalg.norm(vol.affine[:3, :3], axis=0)
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-6)
    assert vol.provenance.to_json()["repairs"][0]["tilt_deg"] == pytest.approx(14.0, abs=0.1)
