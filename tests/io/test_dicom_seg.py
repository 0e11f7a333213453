"""DICOM SEG output: read back with highdicom and, separately, with pydicom alone, every SEG lands voxel for voxel
on the NIfTI mask in world coordinates (axial, sagittal, oblique, negated cosines, shuffled files, multi-series
folders, repaired grids, the real JPEG 2000 CT); dciodvfy finds no errors; codes, UIDs and references are right."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from medpipe.errors import GeometryError, OutputError
from medpipe.io.dicom import read_dicom_volume
from medpipe.io.dicom.options import DicomOptions
from medpipe.io.dicom.seg import Algorithm, write_seg
from medpipe.io.geometry import Grid
from medpipe.io.nifti import mask_image
from medpipe.labels import label_table
from tests.conftest import SHARED_DATA
from tests.dicom_factory import oblique_iop, write_enhanced, write_series
from tests.dicom_readback import (
    assert_points_on_mask,
    seg_dciodvfy_errors,
    seg_files,
    seg_points_highdicom,
    seg_points_pydicom,
)

LABELS = {0: "background", 1: "kidney", 3: "tumor", 4: "blob"}
ALGO = Algorithm("tiny-test-model", "0123456789abcdef" * 4)

ORIENTATIONS = {
    "axial": "axial",
    "sagittal": "sagittal",
    "coronal": "coronal",
    "oblique": oblique_iop(),
    "negated": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
}


def _mask(shape: tuple[int, int, int]) -> np.ndarray:
    """An asymmetric mask (I, J, K): any flip or transpose moves it. Labels 1, 3 and 4 (2 is never used)."""
    m = np.zeros(shape, np.uint8)
    m[2:7, 1:5, 1:4] = 1
    m[9:12, 6:11, 4:7] = 3
    m[13, 2, 0] = 4
    return m


def write_mask(path: Path, labels: np.ndarray, grid: Grid) -> Path:
    """The NIfTI mask as inference writes it (same image builder; torch-free for speed)."""
    nib.save(mask_image(labels, grid.affine), str(path))
    return path


def check_dciodvfy(path: Path, labelmap: bool = False) -> None:
    """No dciodvfy errors (skipped without dicom3tools; LABELMAP: less the lines of a validator that predates it).
    tests/conftest.py checks every other SEG a test leaves in its tmp_path the same way."""
    errors = seg_dciodvfy_errors(path)
    assert not errors, errors
    assert (pydicom.dcmread(path, stop_before_pixels=True).SegmentationType == "LABELMAP") == labelmap


def _write(tmp: Path, folder: Path, mask_fn=_mask, seg_type: str = "binary", **read) -> tuple[Path, Path, object]:
    vol = read_dicom_volume(folder, DicomOptions(**read))
    tmp.mkdir(parents=True, exist_ok=True)
    labels = mask_fn(vol.array.shape)
    nifti = write_mask(tmp / "case.nii.gz", labels, vol.grid)
    out = write_seg(tmp / "case.seg.dcm", labels, vol.grid, vol.source_files, label_table(LABELS), ALGO,
                    seg_type=seg_type, repaired=bool(vol.provenance.repairs))  # type: ignore[arg-type]
    return nifti, tmp / "case.seg.dcm", out


def _check_lands(nifti: Path, seg: Path) -> None:
    points, names, _ = seg_points_pydicom(seg)
    assert_points_on_mask(points, names, nifti, LABELS)
    points, names = seg_points_highdicom(seg)
    assert_points_on_mask(points, names, nifti, LABELS)


@pytest.mark.parametrize("seg_type", ["binary", "labelmap"])
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_seg_lands_on_the_nifti_mask(tmp_path: Path, orientation: str, seg_type: str) -> None:
    series = write_series(tmp_path / "dcm", orientation=ORIENTATIONS[orientation], instance_order="shuffled",
                          intercept=-1024.0)
    nifti, seg, out = _write(tmp_path, tmp_path / "dcm", seg_type=seg_type)
    _check_lands(nifti, seg)
    check_dciodvfy(seg, labelmap=seg_type == "labelmap")
    # BINARY: native 1-bit frames (what viewers read); LABELMAP: the compact RLE-compressed form
    syntax = pydicom.dcmread(seg, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert syntax == (RLELossless if seg_type == "labelmap" else ExplicitVRLittleEndian)
    # every frame references the source image at its own position
    _, _, frames = seg_points_pydicom(seg)
    by_uid = {str(pydicom.dcmread(f).SOPInstanceUID): np.asarray(pydicom.dcmread(f).ImagePositionPatient, float)
              for f in series.files}
    assert frames and out.frames == len(frames) and out.frames_referencing_source == len(frames)  # type: ignore[attr-defined]
    for frame in frames:
        assert len(frame["refs"]) == 1 and np.allclose(by_uid[frame["refs"][0]], frame["ipp"], atol=1e-4)


def test_binary_seg_omits_empty_frames_and_describes_segments(tmp_path: Path) -> None:
    series = write_series(tmp_path / "dcm", intercept=-1024.0, patient_name="Doe^Jane", patient_id="P-1")
    _, seg_path, out = _write(tmp_path, tmp_path / "dcm")
    ds = pydicom.dcmread(seg_path)
    src = pydicom.dcmread(series.files[0])
    # frames: label 1 on 3 slices, label 3 on 3 slices, label 4 on 1 slice; segment 2 (tumor, value 3) etc.
    assert ds.SegmentationType == "BINARY" and int(ds.NumberOfFrames) == 7
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["kidney", "tumor", "blob"]
    kidney, tumor, blob = ds.SegmentSequence
    assert (kidney.SegmentedPropertyTypeCodeSequence[0].CodeValue, kidney.SegmentedPropertyTypeCodeSequence[0]
            .CodingSchemeDesignator) == ("64033007", "SCT")
    assert tumor.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert blob.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Tissue"
    assert all("RecommendedDisplayCIELabValue" in s for s in ds.SegmentSequence)
    algo = kidney.SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "medpipe" and algo.AlgorithmVersion
    params = str(algo.AlgorithmParameters)
    assert "tiny-test-model" in params and ALGO.model_sha256 in params
    # study, patient and frame of reference from the source; new series and instance
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert str(ds.PatientName) == "Doe^Jane" and ds.PatientID == "P-1"
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert out.to_json()["segment_label_values"] == {"1": 1, "2": 3, "3": 4}  # type: ignore[attr-defined]


def test_new_uids_are_unique_per_write(tmp_path: Path) -> None:
    write_series(tmp_path / "dcm", intercept=-1024.0)
    _, first, _ = _write(tmp_path / "a", tmp_path / "dcm")
    _, second, _ = _write(tmp_path / "b", tmp_path / "dcm")
    a, b = pydicom.dcmread(first), pydicom.dcmread(second)
    assert a.SeriesInstanceUID != b.SeriesInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID


@pytest.mark.parametrize("seg_type", ["binary", "labelmap"])
def test_all_empty_prediction_writes_a_valid_seg_with_its_segments(tmp_path: Path, seg_type: str) -> None:
    write_series(tmp_path / "dcm", intercept=-1024.0)
    nifti, seg, _ = _write(tmp_path, tmp_path / "dcm", mask_fn=lambda s: np.zeros(s, np.uint8), seg_type=seg_type)
    ds = pydicom.dcmread(seg)
    assert [s.SegmentLabel for s in ds.SegmentSequence if s.SegmentNumber > 0] == ["kidney", "tumor", "blob"]
    assert int(ds.NumberOfFrames) >= 1 and not ds.pixel_array.any()
    points, names, _ = seg_points_pydicom(seg)
    assert_points_on_mask(points, names, nifti, LABELS)
    check_dciodvfy(seg, labelmap=seg_type == "labelmap")


def test_multi_series_folder_references_the_chosen_series(tmp_path: Path) -> None:
    write_series(tmp_path / "dcm", series_number=3, description="axial", intercept=-1024.0)
    chosen = write_series(tmp_path / "dcm", series_number=4, description="sag", orientation="sagittal", seed=1,
                          intercept=-1024.0)
    nifti, seg, _ = _write(tmp_path, tmp_path / "dcm", series=4)
    _check_lands(nifti, seg)
    ds = pydicom.dcmread(seg)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == chosen.series_uid
    assert int(ds.SeriesNumber) == 1004
    check_dciodvfy(seg)


@pytest.mark.parametrize("repair", ["uneven", "tilt"])
def test_repaired_grid_seg_has_its_own_plane_positions(tmp_path: Path, repair: str) -> None:
    if repair == "uneven":
        write_series(tmp_path / "dcm", dz_list=[2.5, 2.5, 5.0, 2.5, 2.5, 2.5, 2.5], intercept=-1024.0)
        read = {"allow_uneven": True}
    else:
        write_series(tmp_path / "dcm", tilt_mm_per_slice=0.9, intercept=-1024.0)
        read = {"allow_tilt": True}
    nifti, seg, out = _write(tmp_path, tmp_path / "dcm", **read)
    assert out.grid == "repaired" and any("repaired grid" in n for n in out.notes)  # type: ignore[attr-defined]
    _check_lands(nifti, seg)
    # the record counts the frames that reference a source image, not those that carry an empty (type 2) Derivation
    # Image Sequence: uneven repair -> planes between the source images, none referenced; tilt repair -> each plane
    # is coplanar with its source image but shifted in-plane, referenced with SpatialLocationsPreserved NO
    _, _, frames = seg_points_pydicom(seg)
    referencing = sum(bool(frame["refs"]) for frame in frames)
    assert out.frames_referencing_source == referencing == (0 if repair == "uneven" else len(frames))  # type: ignore[attr-defined]
    for item in pydicom.dcmread(seg).PerFrameFunctionalGroupsSequence:
        for derivation in item.DerivationImageSequence:
            assert all(src.SpatialLocationsPreserved == "NO" for src in derivation.SourceImageSequence)
    check_dciodvfy(seg)


def test_unrepaired_mask_off_the_series_grid_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path / "dcm", intercept=-1024.0)
    vol = read_dicom_volume(tmp_path / "dcm")
    affine = vol.grid.affine.copy()
    affine[:3, 3] += 0.5  # half a millimetre off
    shifted = Grid(vol.grid.shape, affine)
    with pytest.raises(GeometryError, match="not the source series grid"):
        write_seg(tmp_path / "x.seg.dcm", _mask(vol.array.shape), shifted, vol.source_files, label_table(LABELS), ALGO)
    assert not (tmp_path / "x.seg.dcm").exists() and not list(tmp_path.glob(".x.seg*"))


def test_label_values_outside_the_table_are_refused(tmp_path: Path) -> None:
    write_series(tmp_path / "dcm", intercept=-1024.0)
    vol = read_dicom_volume(tmp_path / "dcm")
    labels = _mask(vol.array.shape)
    labels[0, 0, 0] = 2
    with pytest.raises(OutputError, match=r"label values \[2\]"):
        write_seg(tmp_path / "x.seg.dcm", labels, vol.grid, vol.source_files, label_table(LABELS), ALGO)


@pytest.mark.realdata
@pytest.mark.slow
def test_real_jpeg2000_ct_labels_as_seg(tmp_path: Path) -> None:
    root = SHARED_DATA / "dicom" / "ct-abdomen-jpeg2000"
    if not root.is_dir():
        pytest.skip("shared data not present")
    vol = read_dicom_volume(root / "series")
    ref = nib.load(str(root / "labels.nii.gz"))
    # the label map lies on the DICOM grid (rows stored the other way): take each voxel by its world position
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in vol.array.shape], indexing="ij"), -1).reshape(-1, 3)
    to_ref = np.linalg.inv(ref.affine) @ vol.affine
    src = np.rint(ijk @ to_ref[:3, :3].T + to_ref[:3, 3]).astype(int)
    labels = np.asarray(ref.dataobj)[tuple(src.T)].reshape(vol.array.shape).astype(np.uint8)
    names = {0: "background", **{int(v): f"organ{int(v)}" for v in np.unique(labels) if v}}
    nifti = write_mask(tmp_path / "ct.nii.gz", labels, vol.grid)
    out = write_seg(tmp_path / "ct.seg.dcm", labels, vol.grid, vol.source_files, label_table(names), ALGO)
    assert any("SOPInstanceUID blank" in n for n in out.notes) and any("StudyInstanceUID" in n for n in out.notes)
    assert {"StudyInstanceUID", "SeriesInstanceUID"} <= set(out.extra["derived_uids"])  # infer --push refuses it
    points, got, _ = seg_points_pydicom(tmp_path / "ct.seg.dcm")
    assert_points_on_mask(points, got, nifti, names)
    points, got = seg_points_highdicom(tmp_path / "ct.seg.dcm")
    assert_points_on_mask(points, got, nifti, names)
    check_dciodvfy(tmp_path / "ct.seg.dcm")


def test_enhanced_multiframe_source(tmp_path: Path) -> None:
    """One enhanced CT file (frames stored in reverse spatial order): every SEG frame references its frame."""
    write_enhanced(tmp_path / "dcm" / "enhanced.dcm")
    nifti, seg, out = _write(tmp_path, tmp_path / "dcm")
    _check_lands(nifti, seg)
    assert out.frames_referencing_source == out.frames > 0  # type: ignore[attr-defined]
    ds, source = pydicom.dcmread(seg), pydicom.dcmread(tmp_path / "dcm" / "enhanced.dcm")
    for item in ds.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        src_frame = source.PerFrameFunctionalGroupsSequence[int(ref.ReferencedFrameNumber) - 1]
        assert np.allclose(src_frame.PlanePositionSequence[0].ImagePositionPatient,
                           item.PlanePositionSequence[0].ImagePositionPatient, atol=1e-4)
    check_dciodvfy(seg)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) not installed")
def test_the_validator_check_can_fail(tmp_path: Path) -> None:
    """The dciodvfy oracle (here and in tests/conftest.py) finds SEG files by SOP class and reports a SEG that
    lacks a required attribute; the broken copy is named *.seg so that the conftest check leaves it alone."""
    write_series(tmp_path / "dcm", intercept=-1024.0)
    _, seg, _ = _write(tmp_path, tmp_path / "dcm")
    assert seg_files(tmp_path) == [seg]  # the 8 CT images are not SEGs
    ds = pydicom.dcmread(seg)
    del ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence
    del ds.FrameOfReferenceUID
    ds.save_as(tmp_path / "broken.seg")
    errors = seg_dciodvfy_errors(tmp_path / "broken.seg")
    assert errors and any("Segmented Property Type Code Sequence" in e or "SegmentedPropertyTypeCodeSequence" in e
                          for e in errors), errors
