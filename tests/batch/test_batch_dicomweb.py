"""`medpipe batch --manifest` with cases on a DICOMweb server (issue 13: "DICOMweb study references once the
DICOM-output issue has landed"), against the real Orthanc: each worker pulls its case's series into the attempt's
staging folder, segments it like a local DICOM folder, and never commits the pulled files; a study of several series
without a chosen one and a study the server does not hold fail only their own case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medpipe.batch.manifest import load_manifest
from medpipe.batch.records import BatchCase, RemoteSeries
from medpipe.errors import InputError
from medpipe.io.dicomweb import DicomwebOptions, push
from tests.batch_cases import env, tiny_checkpoint
from tests.dicom_factory import write_series
from tests.io.test_dicomweb import study_modules
from tests.services.orthanc import PASSWORD, USER, Orthanc

FAST = DicomwebOptions(retries=1, backoff_s=0.01, timeout_s=10)
ABSENT_STUDY = "1.2.826.0.1.3680043.10.999.404"


def test_manifest_rows_name_dicomweb_series_and_are_checked(tmp_path: Path) -> None:
    csv = tmp_path / "cases.csv"
    csv.write_text("case_id,dicomweb_url,study_uid,series_uid\n"
                   "a,http://127.0.0.1:8042/dicom-web,1.2.3,1.2.3.4\nb,http://127.0.0.1:8042/dicom-web/,1.2.5,\n")
    cases = load_manifest(csv, ("ct",))
    assert cases == [BatchCase("a", remote=RemoteSeries("http://127.0.0.1:8042/dicom-web", "1.2.3", "1.2.3.4")),
                     BatchCase("b", remote=RemoteSeries("http://127.0.0.1:8042/dicom-web", "1.2.5", None))]
    assert [BatchCase.from_json(json.loads(json.dumps(c.to_json()))) for c in cases] == cases
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"case_id": "x", "dicomweb": {"url": "http://u:secret@pacs/dicom-web",
                                                             "study_uid": "1.2.3"}}]))
    with pytest.raises(InputError) as err:
        load_manifest(bad, ("ct",))
    assert "credentials" in str(err.value) and "secret" not in str(err.value)
    bad.write_text(json.dumps([{"case_id": "x", "dicomweb": {"url": "http://pacs/dicom-web", "study_uid": "1.2.x"}}]))
    with pytest.raises(InputError, match="not a DICOM study UID"):
        load_manifest(bad, ("ct",))


@pytest.mark.slow
def test_batch_pulls_manifest_series_from_orthanc_and_matches_infer(orthanc: Orthanc, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MEDPIPE_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDPIPE_DICOMWEB_PASSWORD", PASSWORD)
    a = write_series(tmp_path / "a", seed=431, intercept=-1024.0, edit=study_modules, n_slices=12)
    b = write_series(tmp_path / "b", seed=432, intercept=-1024.0, edit=study_modules, n_slices=12,
                     orientation="sagittal")
    a2 = write_series(tmp_path / "a2", seed=431, intercept=-1024.0, edit=study_modules, n_slices=12,
                      series_number=4)  # a second series in a's study
    for s in (a, b, a2):
        assert push(orthanc.dicomweb, s.files, options=FAST).ok
    study = {k: str(pydicom.dcmread(s.files[0]).StudyInstanceUID) for k, s in (("a", a), ("b", b))}
    manifest = tmp_path / "cases.json"
    manifest.write_text(json.dumps({"cases": [
        {"case_id": "web-a", "dicomweb": {"url": orthanc.dicomweb, "study_uid": study["a"],
                                          "series_uid": a.series_uid}},
        {"case_id": "web-b", "dicomweb": {"url": orthanc.dicomweb, "study_uid": study["b"]}},
        {"case_id": "web-two", "dicomweb": {"url": orthanc.dicomweb, "study_uid": study["a"]}},
        {"case_id": "web-gone", "dicomweb": {"url": orthanc.dicomweb, "study_uid": ABSENT_STUDY}},
    ]}))
    model = tiny_checkpoint(tmp_path / "model")
    out = tmp_path / "batch"
    run_env = {**env(), "HOME": str(tmp_path), "MEDPIPE_DICOMWEB_USER": USER, "MEDPIPE_DICOMWEB_PASSWORD": PASSWORD}
    cmd = [sys.executable, "-m", "medpipe.cli", "batch", str(model), "--manifest", str(manifest), "-o", str(out),
           "--device", "cpu", "--workers", "2", "--format", "nifti,dicom-seg", "--retries", "1"]
    res = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 1, res.stdout + res.stderr  # two cases fail, the batch goes on
    failed = {p.stem: json.loads(p.read_text()) for p in (out / "ledger" / "failed").glob("*.json")}
    assert sorted(failed) == ["web-gone", "web-two"]
    assert "holds 2 series" in failed["web-two"]["reason"] and a.series_uid in failed["web-two"]["reason"]
    assert "not found on the server" in failed["web-gone"]["reason"]
    # each pulled case lands exactly where `medpipe infer` on the local series puts it
    for case, series in (("web-a", a), ("web-b", b)):
        side = json.loads((out / "predictions" / f"{case}.json").read_text())
        assert side["status"] == "ok" and side["input"]["series_uid"] == series.series_uid
        assert (out / "predictions" / f"{case}.seg.dcm").is_file()
        ref = tmp_path / f"infer-{case}"
        done = subprocess.run([sys.executable, "-m", "medpipe.cli", "infer", str(model), str(series.folder),
                               "-o", str(ref), "--device", "cpu"], env=env(), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        (want,) = [p for p in ref.glob("*.nii.gz")]
        got_img, want_img = nib.load(out / "predictions" / f"{case}.nii.gz"), nib.load(want)
        assert np.allclose(got_img.affine, want_img.affine, atol=1e-4)
        assert np.array_equal(np.asarray(got_img.dataobj), np.asarray(want_img.dataobj))
    # the pulled series are inputs, not outputs: nothing of them is committed or left behind
    assert not list((out / "predictions").rglob(".pulled")) and not list((out / "ledger" / "staging").iterdir())
    assert not [p for p in (out / "predictions").rglob("*.dcm") if not p.name.endswith(".seg.dcm")]
    # credentials and patient names never reach the ledger, the outputs' sidecars or the screen
    texts = [p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".html")]
    for text in [*texts, res.stdout, res.stderr]:
        assert PASSWORD not in text and "Test^Patient" not in text
    # a rerun computes nothing that is done (the failures are tried again and fail again)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "predictions").iterdir()}
    again = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1, again.stdout + again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "predictions").iterdir()} == before
