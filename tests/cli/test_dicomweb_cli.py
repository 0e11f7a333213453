"""``medpipe pull`` / ``medpipe push`` / ``medpipe infer --push`` through typer's CliRunner against the real
Orthanc of tests/services: exit codes, one-line errors, and a sentinel password and patient name that never
reach the output."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from medpipe.cli import app
from medpipe.io.dicomweb.auth import ENV_PASSWORD, ENV_TOKEN, ENV_USER
from tests.dicom_factory import write_series
from tests.services.orthanc import PASSWORD, USER, Orthanc, free_port

runner = CliRunner()
PHI = "ZZPHISENTINEL"


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    monkeypatch.setenv(ENV_USER, USER)
    monkeypatch.setenv(ENV_PASSWORD, PASSWORD)


def _clean(res, *fragments: str) -> str:
    text = " ".join(res.output.split())
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and PASSWORD not in res.output and PHI not in res.output
    for f in fragments:
        assert f in text, text
    return text


def test_push_and_pull_through_the_cli(orthanc: Orthanc, creds: None, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    series = write_series(tmp_path / "src", seed=201, patient_name=f"{PHI}^Jane", patient_id=f"{PHI}-ID")
    res = runner.invoke(app, ["push", orthanc.dicomweb, str(tmp_path / "src")])
    assert res.exit_code == 0, res.output
    assert f"stored 8 of 8 instance(s) on {orthanc.dicomweb}" in " ".join(res.output.split())
    study = str(pydicom.dcmread(series.files[0]).StudyInstanceUID)
    res = runner.invoke(app, ["pull", orthanc.dicomweb, "--study", study, "-o", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.output)
    assert record["series"][0]["series_uid"] == series.series_uid and record["series"][0]["n_downloaded"] == 8
    assert len(list((tmp_path / "out" / series.series_uid).glob("*.dcm"))) == 8
    res = runner.invoke(app, ["pull", orthanc.dicomweb, "--study", study, "--series", series.series_uid,
                              "-o", str(tmp_path / "out")])
    assert res.exit_code == 0 and series.series_uid[:20] in res.output
    logs = " ".join(r.getMessage() for r in caplog.records)
    for text in (res.output, logs):
        assert PASSWORD not in text and PHI not in text


def test_push_reports_instances_the_server_refused(orthanc: Orthanc, creds: None, tmp_path: Path) -> None:
    a = write_series(tmp_path / "a", seed=202)
    b = write_series(tmp_path / "b", seed=203)
    other = str(pydicom.dcmread(b.files[0]).StudyInstanceUID)
    res = runner.invoke(app, ["push", orthanc.dicomweb, str(a.files[0]), str(b.files[0]), "--study", other])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "not stored:" in text and "stored 1 of 2 instance(s)" in text


def test_series_without_uids_is_refused(orthanc: Orthanc, creds: None, tmp_path: Path) -> None:
    def no_uids(ds: pydicom.Dataset, k: int) -> None:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "", ""

    write_series(tmp_path / "src", seed=204, edit=no_uids, patient_name=f"{PHI}^Jane")
    res = runner.invoke(app, ["push", orthanc.dicomweb, str(tmp_path / "src")])
    _clean(res, "lack a Study, Series or SOP Instance UID", "Nothing was sent")


def test_network_and_credential_failures_are_one_clear_line(orthanc: Orthanc, creds: None, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    write_series(tmp_path / "src", seed=205)
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    res = runner.invoke(app, ["push", dead, str(tmp_path / "src"), "--retries", "1"])
    _clean(res, dead, "could not connect after 2 attempt(s)", "0 of 8 instance(s) were stored")
    monkeypatch.setenv(ENV_PASSWORD, "ZZWRONGSENTINEL")
    res = runner.invoke(app, ["pull", orthanc.dicomweb, "--study", "1.2.3", "-o", str(tmp_path / "out")])
    assert "ZZWRONGSENTINEL" not in _clean(res, "refused the basic credentials", "HTTP 401", ENV_USER)
    res = runner.invoke(app, ["pull", f"http://{USER}:{PASSWORD}@127.0.0.1:{orthanc.port}/dicom-web",
                              "--study", "1.2.3", "-o", str(tmp_path / "out")])
    _clean(res, "the URL carries credentials", ENV_USER)
    res = runner.invoke(app, ["push", "https://127.0.0.1:1/dicom-web", str(tmp_path / "src"), "--insecure",
                              "--retries", "0"])
    _clean(res, "TLS certificate verification is off", "could not connect after 1 attempt(s)")


def test_infer_push_needs_the_dicom_seg_format(creds: None, tmp_path: Path) -> None:
    res = runner.invoke(app, ["infer", str(tmp_path / "run"), str(tmp_path), "-o", str(tmp_path / "out"),
                              "--push", "http://127.0.0.1:1/dicom-web"])
    _clean(res, "--push sends each case's DICOM SEG", "--format dicom-seg")
    assert not (tmp_path / "out").exists()
