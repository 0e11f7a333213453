"""No patient data leaks: a sentinel planted in patient fields and folder names never reaches output file
names, file contents, results, warnings, logs or error messages (D25)."""

from __future__ import annotations

import gzip
import json
import logging
import warnings

import pytest
from rich.console import Console

from medpipe.cli.render import render_info
from medpipe.errors import DicomError
from medpipe.io.dicom import read_dicom_volume
from medpipe.io.dicom.convert import convert_dicom
from medpipe.io.dicom.options import DicomOptions
from medpipe.io.inspect import info
from tests.dicom_factory import write_series

SENTINEL = "ZZPHISENTINEL"


def _plant(ds, k):
    ds.PatientName = f"{SENTINEL}^John"
    ds.PatientID = f"{SENTINEL}-MRN-123"
    ds.OtherPatientIDs = f"{SENTINEL}-OTHER"
    ds.PatientBirthDate = "19700101"
    ds.InstitutionName = f"{SENTINEL} General Hospital"
    ds.ReferringPhysicianName = f"{SENTINEL}^Doctor"
    ds.AccessionNumber = "ZZPHISENT1"
    ds.StudyDescription = f"{SENTINEL} study"


def _all_output_text(folder) -> str:
    chunks = []
    for path in sorted(folder.rglob("*")):
        chunks.append(path.name)
        if path.is_file():
            data = path.read_bytes()
            chunks.append((gzip.decompress(data) if path.name.endswith(".gz") else data).decode("latin-1"))
    return "\n".join(chunks)


def _render(result) -> str:
    console = Console(record=True, width=300)
    console.print(render_info(result))
    return console.export_text()


def test_sentinel_in_subfolders_and_patient_fields_never_leaks(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    root = tmp_path / "input"
    sub = root / f"{SENTINEL}_MRN_123" / f"{SENTINEL}^DOE"
    good = write_series(sub / "a", series_number=3, description="body", edit=_plant)
    write_series(sub / "b", series_number=4, description="gappy", drop=(3,), edit=_plant, seed=1)
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = convert_dicom(root, out)
        info_result = info(root)
        volume = read_dicom_volume(root, DicomOptions(series=3))
        errors = []
        for call in (
            lambda: read_dicom_volume(root),
            lambda: read_dicom_volume(root, DicomOptions(series=4)),
            lambda: read_dicom_volume(root, DicomOptions(series=9)),
            lambda: convert_dicom(root, tmp_path / "out2", DicomOptions(series=4)),
        ):
            with pytest.raises(DicomError) as err:
                call()
            errors.append(str(err.value))
    good.files[0].write_bytes(good.files[0].read_bytes()[:-50])
    with pytest.raises(DicomError) as err:
        read_dicom_volume(root, DicomOptions(series=3))
    errors.append(str(err.value))
    assert [w.nifti.name for w in result.written] == ["series3_body.nii.gz"]
    assert len(result.failed) == 1
    texts = {
        "output files": _all_output_text(out),
        "convert result": json.dumps(result.to_json()),
        "info json": json.dumps(info_result.to_json()),
        "info table": _render(info_result),
        "provenance": json.dumps(volume.provenance.to_json()),
        "errors": "\n".join(errors),
        "warnings": "\n".join(str(w.message) for w in caught),
        "logs": caplog.text,
    }
    assert "truncated" in errors[-1] and "missing slice" in errors[1]
    for where, text in texts.items():
        assert SENTINEL not in text, f"patient data leaked into {where}"
        assert "19700101" not in text and "ZZPHISENT1" not in text


def test_sentinel_in_the_given_folder_stays_out_of_outputs(tmp_path):
    """The folder the user passes may appear in their own error messages, never in outputs."""
    folder = tmp_path / f"{SENTINEL}_case"
    write_series(folder, edit=_plant)
    out = tmp_path / "out"
    convert_dicom(folder, out)
    assert SENTINEL not in _all_output_text(out)


def _plant_single_component(ds, k):
    """As anonymisers and some scanners write it: a patient name of one component (no caret), which highdicom
    quotes in a warning unless medpipe keeps that warning in."""
    _plant(ds, k)
    ds.PatientName = SENTINEL
    ds.ReferringPhysicianName = f"{SENTINEL}DR"


@pytest.mark.parametrize("plant", [_plant, _plant_single_component], ids=["name^given", "single-component"])
def test_seg_path_carries_patient_data_only_inside_the_dicom_objects(tmp_path, caplog, plant):
    """The SEG and RTSTRUCT must carry the patient module (a PACS needs it); their file names, the output records
    (sidecar material), errors, warnings and logs never do."""
    import numpy as np
    import pydicom

    from medpipe.errors import MedpipeError
    from medpipe.io.dicom.rtstruct import write_rtstruct
    from medpipe.io.dicom.seg import Algorithm, write_seg
    from medpipe.io.geometry import Grid
    from medpipe.labels import label_table

    caplog.set_level(logging.DEBUG)
    folder = tmp_path / f"{SENTINEL}_MRN_123" / f"{SENTINEL}^DOE"
    write_series(folder, edit=plant, intercept=-1024.0)
    out = tmp_path / "out"
    table = label_table({0: "background", 1: "kidney"})
    algo = Algorithm("model", "0" * 64)
    errors = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = read_dicom_volume(folder)
        labels = np.zeros(vol.array.shape, np.uint8)
        labels[2:6, 2:6, 2:5] = 1
        records = [write_seg(out / "case.seg.dcm", labels, vol.grid, vol.source_files, table, algo),
                   write_seg(out / "case.lm.seg.dcm", labels, vol.grid, vol.source_files, table, algo,
                             seg_type="labelmap"),
                   write_rtstruct(out / "case.rtstruct.dcm", labels, vol.grid, vol.source_files, table, algo)]
        off = vol.grid.affine.copy()
        off[:3, 3] += 0.5
        for call in (
            lambda: write_seg(out / "bad.seg.dcm", labels + 1, vol.grid, vol.source_files, table, algo),
            lambda: write_seg(out / "bad.seg.dcm", labels, Grid(vol.grid.shape, off), vol.source_files, table, algo),
            lambda: write_rtstruct(out / "bad.rtstruct.dcm", labels, Grid(vol.grid.shape, off), vol.source_files,
                                   table, algo),
        ):
            with pytest.raises(MedpipeError) as err:
                call()
            errors.append(str(err.value))
    for name in ("case.seg.dcm", "case.lm.seg.dcm", "case.rtstruct.dcm"):
        ds = pydicom.dcmread(out / name)
        assert str(ds.PatientName).startswith(SENTINEL) and ds.PatientID.startswith(SENTINEL)
    texts = {
        "file names": "\n".join(p.name for p in out.rglob("*")),
        "records": json.dumps([r.to_json() for r in records]),
        "errors": "\n".join(errors),
        "warnings": "\n".join(str(w.message) for w in caught),
        "logs": caplog.text,
    }
    for where, text in texts.items():
        assert SENTINEL not in text, f"patient data leaked into {where}"
        assert "19700101" not in text and "ZZPHISENT1" not in text
