"""Pixel values: transfer syntaxes, the modality LUT in float, BitsStored masking, pre-flight of lying or
truncated files, multi-frame images. Every case is built with pydicom/SimpleITK; nothing is mocked."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)

from medpipe.errors import DicomError
from medpipe.io.dicom import read_dicom_volume
from medpipe.io.dicom.options import DicomOptions
from medpipe.io.inspect import info
from tests.dicom_factory import pattern, save, write_enhanced, write_series

SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLosslessSV1,
    JPEG2000Lossless,
]


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_transfer_syntaxes_decode_to_the_same_volume(tmp_path, syntax):
    series = write_series(tmp_path / "s", transfer_syntax=syntax, intercept=-1024.0)
    vol = read_dicom_volume(series.folder)
    np.testing.assert_array_equal(vol.array, series.expected_array())
    assert vol.provenance.to_json()["source"]["transfer_syntax"] == [pydicom.uid.UID(syntax).name]


@pytest.mark.parametrize(
    "sample",
    ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm"],
)
def test_pydicom_reference_files_decode_like_the_uncompressed_one(tmp_path, sample):
    """pydicom's sample files (encoded by other toolkits) stacked into 3-slice series."""
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.float32)
    folder = tmp_path / "s"
    folder.mkdir()
    for k in range(3):
        ds = pydicom.dcmread(get_testdata_file(sample))
        ds.ImagePositionPatient = [-83.9063, -91.2, 6.6406 + 5.0 * k]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.5{k}"
        save(ds, folder / f"{k}.dcm")
    vol = read_dicom_volume(folder)
    for k in range(3):
        np.testing.assert_array_equal(vol.array[:, :, k], reference.T)


def test_unknown_transfer_syntax_is_named(tmp_path):
    series = write_series(tmp_path / "s", n_slices=4)
    for path in series.files:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.110"  # JPEG XL: pydicom has no decoder
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    with pytest.raises(DicomError) as err:
        read_dicom_volume(series.folder)
    assert "cannot decode unknown transfer syntax 1.2.840.10008.1.2.4.110" in str(err.value)
    assert "in 4 of 4 images" in str(err.value)


def test_hu_never_wraps_for_unsigned_16_bit(tmp_path):
    def high(k):
        return np.full((12, 16), 40000 + k, dtype=np.uint16)

    series = write_series(tmp_path / "s", signed=False, values=high, intercept=-1024.0)
    vol = read_dicom_volume(series.folder)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array[0, 0, :], 40000 - 1024 + np.arange(8))


def test_rescale_per_slice_in_float(tmp_path):
    def per_slice(ds, k):
        ds.RescaleSlope = 0.5 + k
        ds.RescaleIntercept = -1000.0 + 10 * k

    series = write_series(tmp_path / "s", edit=per_slice)
    vol = read_dicom_volume(series.folder)
    k = np.arange(8)
    expected = series.stored.transpose(2, 1, 0) * (0.5 + k) + (-1000.0 + 10 * k)
    np.testing.assert_allclose(vol.array, expected, rtol=1e-6)
    assert not vol.integer_valued
    assert "per slice" in vol.provenance.to_json()["values"]["transform"]


def test_12_bit_unsigned_high_bit_garbage_is_masked(tmp_path):
    def garbage(k):
        return (100 * k + pattern()) | 0xF000

    series = write_series(tmp_path / "s", bits_stored=12, signed=False, values=garbage)
    vol = read_dicom_volume(series.folder)
    np.testing.assert_array_equal(vol.array, (series.stored & 0x0FFF).transpose(2, 1, 0))
    assert vol.provenance.to_json()["values"]["high_bits_masked_voxels"] == 8 * 12 * 16


def test_12_bit_signed_values_are_sign_extended(tmp_path):
    def negative(k):
        values = (-1000 + 100 * k + pattern()).astype(np.int16)
        return (values.view(np.uint16) & 0x0FFF).view(np.int16)  # only 12 bits written, high bits zero

    series = write_series(tmp_path / "s", bits_stored=12, signed=True, values=negative)
    vol = read_dicom_volume(series.folder)
    expected = np.stack([-1000 + 100 * k + pattern() for k in range(8)]).transpose(2, 1, 0)
    np.testing.assert_array_equal(vol.array, expected)


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - keep])


def test_truncated_pixel_data_is_an_error_not_zero_fill(tmp_path):
    series = write_series(tmp_path / "s")
    victim = series.files[5]
    _truncate(victim, 100)
    with pytest.raises(DicomError) as err:
        read_dicom_volume(series.folder)
    text = str(err.value)
    assert str(series.folder) in text and victim.name in text
    assert "truncated file: 284 bytes of pixel data, expected 384" in text
    # the pre-flight runs on headers alone: info reports it too
    (vol_info,) = info(series.folder).volumes
    assert any("truncated" in p for p in vol_info.problems)


def test_lying_header_is_refused_before_allocation(tmp_path):
    def huge(ds, k):
        ds.Rows, ds.Columns = 60000, 60000

    series = write_series(tmp_path / "s", edit=huge)
    start = time.perf_counter()
    with pytest.raises(DicomError, match="implausible image size 60000x60000"):
        read_dicom_volume(series.folder)
    assert time.perf_counter() - start < 5

    def frames(ds, k):
        ds.NumberOfFrames = 10_000_000

    series = write_series(tmp_path / "f", edit=frames)
    with pytest.raises(DicomError, match="implausible NumberOfFrames 10000000"):
        read_dicom_volume(series.folder)


def test_declared_pixel_length_shorter_than_image(tmp_path):
    def short(ds, k):
        ds.Rows = 24  # twice the rows the pixel data holds

    series = write_series(tmp_path / "s", edit=short)
    with pytest.raises(DicomError, match=r"pixel data holds 384 bytes, header declares 768"):
        read_dicom_volume(series.folder)


def test_colour_images_are_refused(tmp_path):
    def rgb(ds, k):
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"

    series = write_series(tmp_path / "s", edit=rgb)
    with pytest.raises(DicomError, match="3 samples per pixel"):
        read_dicom_volume(series.folder)


def test_monochrome1_keeps_modality_values(tmp_path):
    def mono1(ds, k):
        ds.PhotometricInterpretation = "MONOCHROME1"

    series = write_series(tmp_path / "s", edit=mono1)
    vol = read_dicom_volume(series.folder)
    np.testing.assert_array_equal(vol.array, series.expected_array())
    assert any("MONOCHROME1" in d for d in vol.provenance.to_json()["decisions"])


def test_enhanced_multiframe_geometry_from_functional_groups(tmp_path):
    series = write_enhanced(tmp_path / "enh" / "ct.dcm")
    vol = read_dicom_volume(series.folder)
    np.testing.assert_array_equal(vol.array, series.expected_array())
    np.testing.assert_allclose(vol.affine, series.expected_affine(), atol=1e-4)
    single = write_series(tmp_path / "single", intercept=-1024.0)
    np.testing.assert_allclose(vol.affine, read_dicom_volume(single.folder).affine, atol=1e-6)


def test_enhanced_multiframe_without_positions_is_refused(tmp_path):
    write_enhanced(tmp_path / "enh" / "ct.dcm", with_positions=False)
    with pytest.raises(DicomError, match="ImagePositionPatient missing or invalid in 8 of 8 images"):
        read_dicom_volume(tmp_path / "enh")


def test_classic_multiframe_without_frame_geometry_is_unsupported(tmp_path):
    series = write_series(tmp_path / "s", n_slices=3)
    folder = tmp_path / "mf"
    folder.mkdir()
    ds = pydicom.dcmread(series.files[0])
    ds.NumberOfFrames = 3
    ds.PixelData = series.stored.astype(np.int16).tobytes()
    save(ds, folder / "mf.dcm")
    shutil.copy(series.files[1], folder / "b.dcm")
    shutil.copy(series.files[2], folder / "c.dcm")
    with pytest.raises(
        DicomError, match="multi-frame image \\(3 frames\\) without per-frame geometry is not supported"
    ):
        read_dicom_volume(folder)


def test_jpeg2000_threads_and_both_decoders_agree(tmp_path):
    from medpipe.io.dicom import analyse, scan_folder
    from medpipe.io.dicom.decode import decode_frames

    series = write_series(tmp_path / "s", transfer_syntax=JPEG2000Lossless, intercept=-1024.0)
    serial = read_dicom_volume(series.folder, DicomOptions(workers=1))
    threaded = read_dicom_volume(series.folder, DicomOptions(workers=3))
    np.testing.assert_array_equal(serial.array, series.expected_array())
    np.testing.assert_array_equal(threaded.array, serial.array)
    (cand,) = scan_folder(series.folder).candidates
    frames = [cand.frames[i] for i in analyse(cand).order]
    fast = decode_frames(frames, series.folder)
    slow = decode_frames(frames, series.folder, use_imagecodecs=False)
    assert fast.keys() == slow.keys()
    for key in fast:
        np.testing.assert_array_equal(fast[key], slow[key])


@pytest.mark.parametrize("use_imagecodecs", [True, False])
def test_jpeg2000_sign_mismatch_follows_pixel_representation(tmp_path, use_imagecodecs):
    """pydicom's sample: a J2K stream declared unsigned holding signed CT values (PixelRepresentation 1)."""
    from medpipe.io.dicom import scan_folder
    from medpipe.io.dicom.decode import decode_frames
    from medpipe.io.dicom.pixels import mask_to_bits_stored

    folder = tmp_path / "s"
    folder.mkdir()
    shutil.copy(get_testdata_file("J2K_pixelrep_mismatch.dcm"), folder / "a.dcm")
    reference = pydicom.dcmread(get_testdata_file("J2K_pixelrep_mismatch.dcm")).pixel_array
    (cand,) = scan_folder(folder).candidates
    (frame,) = cand.frames
    (raw,) = decode_frames([frame], folder, use_imagecodecs=use_imagecodecs).values()
    values, _ = mask_to_bits_stored(raw, frame.fmt)
    np.testing.assert_array_equal(values, reference)
    assert values.min() < 0


def test_corrupt_jpeg2000_names_file_and_syntax(tmp_path):
    series = write_series(tmp_path / "s", transfer_syntax=JPEG2000Lossless)
    victim = series.files[2]
    data = bytearray(victim.read_bytes())
    start = data.find(b"\xff\x4f\xff\x51")  # J2K codestream start (SOC, SIZ)
    data[start + 40 : start + 80] = b"\x00" * 40
    victim.write_bytes(bytes(data))
    with pytest.raises(DicomError) as err:
        read_dicom_volume(series.folder)
    assert victim.name in str(err.value) and "JPEG 2000" in str(err.value)
