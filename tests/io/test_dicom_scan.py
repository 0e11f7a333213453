"""Folder scan: what is skipped (and counted), how images are grouped into volumes, how one is picked."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medpipe.errors import DicomError
from medpipe.io.dicom import is_dicom_folder, read_dicom_volume, scan_folder
from medpipe.io.dicom.options import DicomOptions
from tests.dicom_factory import base_dataset, write_series


def _junk(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.txt").write_text("exported by a PACS\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 64)
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\x00" * 200)
    (folder / "meta.json").write_text('{"a": 1}')
    (folder / "empty.dcm").write_bytes(b"")


def test_non_dicom_and_empty_files_are_skipped_and_counted(tmp_path):
    series = write_series(tmp_path / "in")
    _junk(series.folder)
    scan = scan_folder(series.folder)
    assert scan.skipped_counts == {"empty file": 1, "not DICOM": 4}
    assert scan.n_files == 13
    vol = read_dicom_volume(series.folder)
    np.testing.assert_array_equal(vol.array, series.expected_array())
    assert vol.provenance.to_json()["scan"]["skipped"] == {"empty file": 1, "not DICOM": 4}


def _non_image(folder: Path, name: str, sop_class: str, **tags: object) -> None:
    ds = base_dataset(folder / name, sop_class=sop_class)
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = str(tags.pop("Modality", "OT"))
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(folder / name, enforce_file_format=True)


def test_non_image_objects_are_skipped_with_reasons(tmp_path):
    series = write_series(tmp_path / "in")
    folder = series.folder
    shutil.copy(get_testdata_file("test-SR.dcm"), folder / "sr.dcm")
    shutil.copy(get_testdata_file("liver_1frame.dcm"), folder / "seg.dcm")
    _non_image(folder, "rtstruct.dcm", "1.2.840.10008.5.1.4.1.1.481.3", Modality="RTSTRUCT")
    _non_image(folder, "pr.dcm", "1.2.840.10008.5.1.4.1.1.11.1", Modality="PR")
    _non_image(folder, "sc.dcm", "1.2.840.10008.5.1.4.1.1.7", Modality="OT")
    _non_image(folder, "dicomdir", "1.2.840.10008.1.3.10")

    def burned(ds, k):
        ds.BurnedInAnnotation = "YES"

    write_series(folder / "dose", n_slices=1, series_number=99, edit=burned, seed=3)
    scan = scan_folder(folder)
    assert scan.skipped_counts == {
        "DICOMDIR": 1,
        "RT structure set (RTSTRUCT)": 1,
        "burned-in annotation": 1,
        "presentation state": 1,
        "secondary capture": 1,
        "segmentation (SEG)": 1,
        "structured report (SR) or key object": 1,
    }
    assert len(scan.candidates) == 1
    np.testing.assert_array_equal(read_dicom_volume(folder).array, series.expected_array())


def test_tagged_localizer_is_skipped(tmp_path):
    series = write_series(tmp_path / "in")

    def localizer(ds, k):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]

    write_series(series.folder, n_slices=2, edit=localizer, series_uid=series.series_uid, seed=8)
    vol = read_dicom_volume(series.folder)
    np.testing.assert_array_equal(vol.array, series.expected_array())
    assert vol.provenance.to_json()["scan"]["skipped"] == {"localizer": 2}


def test_two_series_are_listed_never_silently_first(tmp_path):
    a = write_series(tmp_path / "in" / "a", series_number=3, description="soft tissue")
    b = write_series(tmp_path / "in" / "b", series_number=4, description="bone", orientation="sagittal", seed=2)
    folder = tmp_path / "in"
    with pytest.raises(DicomError) as err:
        read_dicom_volume(folder)
    text = str(err.value)
    assert str(folder) in text and "folder holds 2 volumes" in text
    assert "series 3 'soft tissue'" in text and "series 4 'bone'" in text
    assert "8 images" in text and "sagittal" in text and "--series" in text
    np.testing.assert_array_equal(read_dicom_volume(folder, DicomOptions(series=3)).array, a.expected_array())
    np.testing.assert_array_equal(read_dicom_volume(folder, DicomOptions(series="4")).array, b.expected_array())
    by_uid = read_dicom_volume(folder, DicomOptions(series=b.series_uid))
    np.testing.assert_array_equal(by_uid.array, b.expected_array())
    with pytest.raises(DicomError, match="no series 5; the folder holds"):
        read_dicom_volume(folder, DicomOptions(series=5))


def test_echoes_split_into_volumes(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.77"
    for echo in (1, 2):

        def set_echo(ds, k, echo=echo):
            ds.EchoNumbers = echo

        write_series(tmp_path / "in", modality="MR", series_uid=uid, edit=set_echo, seed=echo)
    scan = scan_folder(tmp_path / "in")
    assert [c.label for c in scan.candidates] == ["3-1", "3-2"]
    assert [c.split for c in scan.candidates] == [{"echo": "1"}, {"echo": "2"}]
    vol = read_dicom_volume(tmp_path / "in", DicomOptions(series="3-2"))
    assert vol.provenance.to_json()["source"]["split_by"] == {"echo": "2"}
    with pytest.raises(DicomError, match="series 3 holds 2 volumes"):
        read_dicom_volume(tmp_path / "in", DicomOptions(series=3))


def test_acquisition_number_splits_only_to_resolve_duplicates(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.78"

    # one helical CT whose AcquisitionNumber changes half-way: a single volume
    def acq_by_half(ds, k):
        ds.AcquisitionNumber = 1 if k < 4 else 2

    write_series(tmp_path / "helical", series_uid=uid, edit=acq_by_half)
    assert len(scan_folder(tmp_path / "helical").candidates) == 1
    # two acquisitions at the same positions: two volumes
    for acq in (1, 2):

        def set_acq(ds, k, acq=acq):
            ds.AcquisitionNumber = acq

        write_series(tmp_path / "phases", series_uid=uid, edit=set_acq, seed=acq)
    scan = scan_folder(tmp_path / "phases")
    assert [c.split for c in scan.candidates] == [{"acquisition": "1"}, {"acquisition": "2"}]


def test_recursive_scan_and_order_independence(tmp_path):
    series = write_series(tmp_path / "in" / "deep" / "er")
    ref = read_dicom_volume(tmp_path / "in")
    # copy the files under other names into another tree: same volume, same affine
    other = tmp_path / "other"
    for n, f in enumerate(reversed(series.files)):
        target = other / f"sub{n % 3}" / f"z{n}.bin"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target)
    vol = read_dicom_volume(other)
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_array_equal(vol.affine, ref.affine)


def test_is_dicom_folder(tmp_path):
    series = write_series(tmp_path / "a" / "b")
    assert is_dicom_folder(tmp_path / "a")
    assert not is_dicom_folder(series.files[0])
    _junk(tmp_path / "text")
    assert not is_dicom_folder(tmp_path / "text")
    assert not is_dicom_folder(tmp_path / "missing")
    raw = tmp_path / "raw"
    raw.mkdir()
    ds = pydicom.dcmread(series.files[0])
    ds.preamble = None
    del ds.file_meta
    pydicom.dcmwrite(raw / "x", ds, implicit_vr=True, little_endian=True)  # no preamble, no DICM
    assert raw.joinpath("x").read_bytes()[128:132] != b"DICM"
    assert is_dicom_folder(raw)
    (raw / "y.dcm").write_bytes(b"\x08\x00\x00\x00 looks like a tag but is not DICOM")
    assert len(scan_folder(raw).candidates) == 1


def test_folder_errors(tmp_path):
    with pytest.raises(DicomError, match="folder not found"):
        scan_folder(tmp_path / "nope")
    series = write_series(tmp_path / "in")
    with pytest.raises(DicomError, match="is not a folder"):
        scan_folder(series.files[0])
    _junk(tmp_path / "junk")
    with pytest.raises(DicomError) as err:
        read_dicom_volume(tmp_path / "junk")
    assert "no CT/MR/PET image series found (5 files: 1 empty file, 4 not DICOM)" in str(err.value)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the invalid values it meets
def test_malformed_headers_never_crash_the_scan(tmp_path):
    """Seeded byte flips after the preamble (D21): each file is skipped, refused or read; nothing else escapes."""
    import random

    from medpipe.errors import MedpipeError
    from medpipe.io.inspect import info

    series = write_series(tmp_path / "src", n_slices=4)
    original = series.files[1].read_bytes()
    rng = random.Random(99)
    outcomes = set()
    for case in range(40):
        folder = tmp_path / f"fuzz{case}"
        folder.mkdir()
        for f in series.files:
            shutil.copy(f, folder / f.name)
        data = bytearray(original)
        for _ in range(rng.randint(1, 12)):
            pos = rng.randrange(132, len(data))
            data[pos] = rng.randrange(256)
        if case % 5 == 0:
            data = data[: rng.randrange(132, len(data))]
        (folder / series.files[1].name).write_bytes(bytes(data))
        try:
            info(folder)
            read_dicom_volume(folder)
            outcomes.add("read")
        except MedpipeError:
            outcomes.add("refused")
    assert outcomes  # every case ended in a volume or a medpipe error, never another exception


def test_an_executable_preamble_is_flagged_never_copied(tmp_path: Path) -> None:
    """D22: a DICOM/PE polyglot (preamble starting with ``MZ``) is read as an image, flagged in ``info`` and in the
    conversion's provenance, and the preamble never reaches an output."""
    import json

    from medpipe.io.dicom.convert import convert_dicom
    from medpipe.io.inspect import info

    def polyglot(ds, k: int) -> None:
        if k == 2:
            ds.preamble = b"MZ" + b"\x90" * 126

    series = write_series(tmp_path / "in", edit=polyglot)
    assert sum(f.read_bytes()[:2] == b"MZ" for f in series.files) == 1
    (vol,) = info(series.folder).volumes
    flag = "1 of 8 files have a preamble that starts with an executable header (MZ, CVE-2019-11687)"
    assert any(flag in n for n in vol.notes), vol.notes
    (out,) = convert_dicom(series.folder, tmp_path / "out").written
    assert flag in " ".join(json.loads(out.sidecar.read_text())["decisions"])
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() and b"MZ\x90\x90" in p.read_bytes()]
    (clean,) = info(write_series(tmp_path / "clean").folder).volumes
    assert not any("preamble" in n for n in clean.notes)
