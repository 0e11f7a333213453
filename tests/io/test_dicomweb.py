"""DICOMweb pull/push against a real Orthanc (tests/services/orthanc.py, started once per session on 127.0.0.1
with HTTP basic authentication): round trips compared voxel for voxel and UID for UID, a SEG found again by
QIDO, refusals (files without UIDs, instances of another study), and network and credential failures."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medpipe.errors import ConfigError, InputError, RemoteError
from medpipe.io.dicomweb import DicomwebOptions, PullResult, PushResult, pull, push
from medpipe.io.dicomweb.auth import ENV_PASSWORD, ENV_TOKEN, ENV_USER, resolve_credentials, server_name
from tests.conftest import SHARED_DATA
from tests.dicom_factory import write_series
from tests.services.flaky_proxy import FlakyProxy
from tests.services.orthanc import PASSWORD, USER, Orthanc, free_port
from tests.services.tls_proxy import HttpsOrthanc

FAST = DicomwebOptions(retries=2, backoff_s=0.01, timeout_s=10)
JPEG2000_CT = SHARED_DATA / "dicom" / "ct-abdomen-jpeg2000" / "series"


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The Orthanc user from the environment (HOME moved so that a real ~/.netrc plays no part)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    monkeypatch.setenv(ENV_USER, USER)
    monkeypatch.setenv(ENV_PASSWORD, PASSWORD)


def make_seg(source_files: list[Path], dest: Path) -> pydicom.Dataset:
    """A BINARY DICOM SEG (highdicom) of a box in the middle of the series, referencing every source image."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = sorted((pydicom.dcmread(f) for f in source_files), key=lambda d: float(d.ImagePositionPatient[2]))
    mask = np.zeros((len(sources), sources[0].Rows, sources[0].Columns), bool)
    mask[2:5, 3:9, 4:12] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="organ", segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Kidney, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="medpipe-test", version="0", family=codes.DCM.ArtificialIntelligence))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=hd.UID(), series_number=99,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medpipe", manufacturer_model_name="test",
        software_versions="0", device_serial_number="0")
    seg.save_as(dest)
    return seg


def _by_sop(files: list[Path]) -> dict[str, pydicom.Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(f) for f in files)}


def test_push_then_pull_round_trip(orthanc: Orthanc, creds: None, tmp_path: Path) -> None:
    series = write_series(tmp_path / "src", seed=101, intercept=-1024.0, instance_order="shuffled")
    before = orthanc.get_json("/statistics")["CountInstances"]  # type: ignore[index]
    result = push(orthanc.dicomweb, [tmp_path / "src"], options=FAST)
    assert result.ok and result.n_stored == len(series.files) == 8
    assert result.server == orthanc.dicomweb and result.to_json()["n_failed"] == 0
    study = str(pydicom.dcmread(series.files[0]).StudyInstanceUID)
    # Orthanc's own REST API (not DICOMweb) counts the 8 new instances
    assert orthanc.get_json("/statistics")["CountInstances"] == before + 8  # type: ignore[index]
    # the same instances again (what a retried batch does): confirmed, not duplicated
    assert push(orthanc.dicomweb, series.files, options=FAST).ok
    assert orthanc.get_json("/statistics")["CountInstances"] == before + 8  # type: ignore[index]
    pulled = pull(orthanc.dicomweb, study, out_dir=tmp_path / "pulled", options=FAST)
    assert [s.series_uid for s in pulled.series] == [series.series_uid]
    assert pulled.n_instances == 8 and pulled.series[0].n_downloaded == 8
    files = sorted((tmp_path / "pulled" / series.series_uid).glob("*.dcm"))
    source, back = _by_sop(series.files), _by_sop(files)
    assert set(back) == set(source) and {f.stem for f in files} == set(source)
    for sop, ds in back.items():
        assert np.array_equal(ds.pixel_array, source[sop].pixel_array)
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "ImagePositionPatient", "RescaleIntercept"):
            assert ds[key].value == source[sop][key].value
    assert not list((tmp_path / "pulled").rglob(".*"))  # no temporary files left
    again = pull(orthanc.dicomweb, study, series.series_uid, out_dir=tmp_path / "pulled", options=FAST)
    assert again.series[0].n_present == 8 and again.series[0].n_downloaded == 0
    assert PullResult.from_json(json.loads(json.dumps(again.to_json()))) == again
    assert PushResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    files[3].unlink()  # one instance lost: fetched on its own (WADO-RS instance), the rest kept
    third = pull(orthanc.dicomweb, study, out_dir=tmp_path / "pulled", options=FAST)
    assert (third.series[0].n_present, third.series[0].n_downloaded) == (7, 1)
    assert np.array_equal(pydicom.dcmread(files[3]).pixel_array, source[files[3].stem].pixel_array)


def study_modules(ds: pydicom.Dataset, k: int) -> None:
    """The patient and study attributes a SEG copies from its source (type 2 in the factory's series)."""
    ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "19700101", "O", "20260101", "120000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "A1", ""


def test_seg_pushed_is_found_in_the_study_referencing_its_source(orthanc: Orthanc, creds: None,
                                                                 tmp_path: Path) -> None:
    series = write_series(tmp_path / "src", seed=102, intercept=-1024.0, edit=study_modules)
    assert push(orthanc.dicomweb, series.files, options=FAST).ok
    seg = make_seg(series.files, tmp_path / "case.seg.dcm")
    result = push(orthanc.dicomweb, [tmp_path / "case.seg.dcm"], study_uid=seg.StudyInstanceUID, options=FAST)
    assert result.ok and result.instances[0].sop_instance_uid == seg.SOPInstanceUID
    import requests
    from dicomweb_client import DICOMwebClient  # QIDO with a plain client: an independent reader

    session = requests.Session()
    session.auth = (USER, PASSWORD)
    client = DICOMwebClient(orthanc.dicomweb, session=session)
    found = client.search_for_series(study_instance_uid=seg.StudyInstanceUID, search_filters={"Modality": "SEG"})
    assert [s["0020000E"]["Value"][0] for s in found] == [seg.SeriesInstanceUID]
    pulled = pull(orthanc.dicomweb, seg.StudyInstanceUID, seg.SeriesInstanceUID, out_dir=tmp_path / "back",
                  options=FAST)
    back = pydicom.dcmread(next(pulled.series[0].folder.glob("*.dcm")))
    assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    refs = {r.ReferencedSOPInstanceUID for r in back.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == {str(pydicom.dcmread(f).SOPInstanceUID) for f in series.files}


def test_instances_of_another_study_are_reported_per_instance(orthanc: Orthanc, creds: None, tmp_path: Path) -> None:
    a = write_series(tmp_path / "a", seed=103)
    b = write_series(tmp_path / "b", seed=104)
    study_b = str(pydicom.dcmread(b.files[0]).StudyInstanceUID)
    result = push(orthanc.dicomweb, [a.files[0], b.files[0]], study_uid=study_b, options=FAST)
    assert not result.ok and result.n_stored == 1
    (failed,) = result.failed
    assert failed.file == str(a.files[0]) and failed.reason and "refused" in failed.reason
    assert result.to_json()["instances"][0]["status"] == "failed"


def _without_study_uid(ds: pydicom.Dataset, k: int) -> None:
    ds.StudyInstanceUID = ""


def test_files_without_uids_are_refused_before_sending(orthanc: Orthanc, creds: None, tmp_path: Path) -> None:
    write_series(tmp_path / "nouid", seed=105, edit=_without_study_uid)
    before = orthanc.get_json("/statistics")["CountInstances"]  # type: ignore[index]
    with pytest.raises(InputError) as err:
        push(orthanc.dicomweb, [tmp_path / "nouid"], options=FAST)
    assert "8 of 8 file(s) lack a Study, Series or SOP Instance UID" in str(err.value)
    assert "Nothing was sent" in str(err.value)
    assert orthanc.get_json("/statistics")["CountInstances"] == before  # type: ignore[index]


@pytest.mark.realdata
@pytest.mark.skipif(not JPEG2000_CT.is_dir(), reason="shared JPEG 2000 CT not present")
def test_real_series_without_uids_is_refused(orthanc: Orthanc, creds: None) -> None:
    with pytest.raises(InputError) as err:
        push(orthanc.dicomweb, [JPEG2000_CT], options=FAST)
    assert "lack a Study, Series or SOP Instance UID" in str(err.value)


def test_connection_refused_is_retried_then_reported(creds: None, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    series = write_series(tmp_path / "src", seed=106)
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(RemoteError) as err:
        push(url, series.files, options=FAST)
    text = str(err.value)
    assert text.startswith(url) and "could not connect after 3 attempt(s)" in text
    assert "0 of 8 instance(s) were stored" in text
    with pytest.raises(RemoteError, match=r"searching study 1\.2\.3 failed: could not connect"):
        pull(url, "1.2.3", out_dir=tmp_path / "out", options=FAST)


def test_wrong_or_missing_credentials(orthanc: Orthanc, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(ENV_USER, USER)
    monkeypatch.setenv(ENV_PASSWORD, "ZZWRONGSENTINEL")
    with pytest.raises(RemoteError) as err:
        pull(orthanc.dicomweb, "1.2.3", out_dir=tmp_path / "out", options=FAST)
    text = str(err.value)
    assert "refused the basic credentials from MEDPIPE_DICOMWEB_USER/MEDPIPE_DICOMWEB_PASSWORD (HTTP 401)" in text
    assert "ZZWRONGSENTINEL" not in text and "ZZWRONGSENTINEL" not in repr(err.value.__cause__ or "")
    monkeypatch.delenv(ENV_USER)
    monkeypatch.delenv(ENV_PASSWORD)
    with pytest.raises(RemoteError, match=r"the server requires credentials \(HTTP 401\)"):
        pull(orthanc.dicomweb, "1.2.3", out_dir=tmp_path / "out", options=FAST)


def test_netrc_file_gives_credentials(orthanc: Orthanc, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in (ENV_USER, ENV_PASSWORD, ENV_TOKEN):
        monkeypatch.delenv(name, raising=False)
    rc = tmp_path / "netrc"
    rc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    rc.chmod(0o600)
    with pytest.raises(RemoteError, match=r"study 1\.2\.3 was not found on the server"):
        pull(orthanc.dicomweb, "1.2.3", out_dir=tmp_path / "out", options=DicomwebOptions(netrc_file=rc))


def test_credential_sources_and_their_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in (ENV_USER, ENV_PASSWORD, ENV_TOKEN):
        monkeypatch.delenv(name, raising=False)
    url = "https://pacs.example:8443/dicom-web"
    assert resolve_credentials(url).kind == "none"
    (tmp_path / ".netrc").write_text("machine pacs.example login alice password ZZSECRET1\n")
    (tmp_path / ".netrc").chmod(0o600)
    home = resolve_credentials(url)
    assert (home.kind, home.user, home.secret) == ("basic", "alice", "ZZSECRET1")
    assert "ZZSECRET1" not in repr(home) and "ZZSECRET1" not in home.describe()
    monkeypatch.setenv(ENV_USER, "bob")
    with pytest.raises(ConfigError, match=ENV_PASSWORD):
        resolve_credentials(url)
    monkeypatch.setenv(ENV_PASSWORD, "ZZSECRET2")
    assert resolve_credentials(url).user == "bob"
    monkeypatch.setenv(ENV_TOKEN, "ZZTOKEN")
    assert resolve_credentials(url).kind == "bearer"
    explicit = tmp_path / "other.netrc"
    explicit.write_text("machine elsewhere login x password y\n")
    with pytest.raises(ConfigError, match=r"no 'machine pacs\.example'"):
        resolve_credentials(url, explicit)
    explicit.write_text("machine pacs.example login carol password ZZSECRET3 bogus ZZSECRET3\n")
    with pytest.raises(ConfigError) as err:
        resolve_credentials(url, explicit)
    assert "ZZSECRET3" not in str(err.value)


def test_urls_with_credentials_are_refused_without_echoing_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        pull("https://alice:ZZSECRET4@pacs.example/dicom-web", "1.2.3", out_dir=tmp_path)
    assert "ZZSECRET4" not in str(err.value) and "https://pacs.example/dicom-web" in str(err.value)
    assert server_name("https://u:p@h:8042/dicom-web/?token=ZZ#x") == "https://h:8042/dicom-web"
    for bad in ("ftp://h/x", "pacs.example/dicom-web", "https://h/x?access_token=ZZSECRET5"):
        with pytest.raises(ConfigError) as err:
            pull(bad, "1.2.3", out_dir=tmp_path)
        assert "ZZSECRET5" not in str(err.value)
    with pytest.raises(InputError, match="not a DICOM study UID"):
        pull("http://127.0.0.1:1/dicom-web", "../../etc", out_dir=tmp_path)


def test_nothing_logged_carries_secrets_or_patient_data(orthanc: Orthanc, creds: None, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    name = "ZZPHISENTINEL^Jane"
    export = tmp_path / "src" / "ZZPHISENTINEL_MRN_1" / "ZZPHISENTINEL^Jane"  # a PACS export's folder names
    series = write_series(export, seed=107, patient_name=name, patient_id="ZZPHISENTINEL-ID")
    result = push(orthanc.dicomweb, [tmp_path / "src"], options=FAST)
    study = result.instances[0].study_uid
    pulled = pull(orthanc.dicomweb, study, out_dir=tmp_path / "out", options=FAST)
    assert pulled.n_instances == len(series.files)
    records = " ".join(r.getMessage() for r in caplog.records) + str(result.to_json()) + str(pulled.to_json())
    assert PASSWORD not in records and "ZZPHISENTINEL" not in records
    assert not [p for p in (tmp_path / "out").rglob("*") if "ZZPHISENTINEL" in p.name]
    write_series(export / "nouid", seed=108, patient_name=name, edit=_without_study_uid)
    with pytest.raises(InputError) as err:
        push(orthanc.dicomweb, [tmp_path / "src"], options=FAST)
    assert "lack a Study" in str(err.value) and "ZZPHISENTINEL" not in str(err.value)


MR_SAGITTAL = SHARED_DATA / "dicom" / "mr-sagittal-positions" / "HFS"


@pytest.mark.realdata
@pytest.mark.skipif(not MR_SAGITTAL.is_dir(), reason="shared sagittal MR not present")
def test_real_series_round_trip_keeps_volume_and_geometry(orthanc: Orthanc, creds: None, tmp_path: Path) -> None:
    from medpipe.io.dicom import read_dicom_volume

    result = push(orthanc.dicomweb, [MR_SAGITTAL], options=FAST)
    assert result.ok and result.n_stored == 35
    first = result.instances[0]
    pulled = pull(orthanc.dicomweb, first.study_uid, first.series_uid, out_dir=tmp_path / "out", options=FAST)
    assert pulled.n_instances == 35
    source, back = read_dicom_volume(MR_SAGITTAL), read_dicom_volume(pulled.series[0].folder)
    assert np.array_equal(source.array, back.array) and np.allclose(source.affine, back.affine, atol=1e-6)


def test_tls_is_verified_unless_insecure(orthanc_tls: HttpsOrthanc, creds: None, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert orthanc_tls.dicomweb.startswith("https://")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    series = write_series(tmp_path / "src", seed=109)
    with pytest.raises(RemoteError) as err:
        push(orthanc_tls.dicomweb, series.files, options=FAST)
    assert "TLS certificate verification failed" in str(err.value) and "0 of 8" in str(err.value)
    assert push(orthanc_tls.dicomweb, series.files, options=DicomwebOptions(insecure=True, retries=0)).ok
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(orthanc_tls.ca_file))  # a private CA, verified
    study = str(pydicom.dcmread(series.files[0]).StudyInstanceUID)
    assert pull(orthanc_tls.dicomweb, study, out_dir=tmp_path / "out", options=FAST).n_instances == 8


def test_transient_failures_are_retried_and_nothing_is_lost_or_doubled(flaky_orthanc: FlakyProxy, orthanc: Orthanc,
                                                                       creds: None, tmp_path: Path) -> None:
    series = write_series(tmp_path / "src", seed=110, intercept=-1024.0)
    before = orthanc.get_json("/statistics")["CountInstances"]  # type: ignore[index]
    flaky_orthanc.fail_next(2)  # the STOW-RS request fails twice (HTTP 503), the third try goes through
    result = push(flaky_orthanc.dicomweb, series.files, options=FAST)
    assert result.ok and result.n_stored == 8 and flaky_orthanc.requests["POST"] == 3
    assert orthanc.get_json("/statistics")["CountInstances"] == before + 8  # type: ignore[index]
    flaky_orthanc.fail_next(2, status=502)  # the QIDO-RS search fails twice
    study = str(pydicom.dcmread(series.files[0]).StudyInstanceUID)
    pulled = pull(flaky_orthanc.dicomweb, study, out_dir=tmp_path / "out", options=FAST)
    assert pulled.n_instances == 8 and pulled.series[0].n_downloaded == 8
    back = _by_sop(sorted((tmp_path / "out" / series.series_uid).glob("*.dcm")))
    assert {sop: ds.pixel_array.tobytes() for sop, ds in back.items()} == {
        sop: ds.pixel_array.tobytes() for sop, ds in _by_sop(series.files).items()}


def test_retries_are_bounded_and_a_half_push_is_not_reported_done(flaky_orthanc: FlakyProxy, orthanc: Orthanc,
                                                                   creds: None, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    series = write_series(tmp_path / "src", seed=111, intercept=-1024.0)
    before = orthanc.get_json("/statistics")["CountInstances"]  # type: ignore[index]
    flaky_orthanc.fail_after(0)  # the server never answers but 503
    with pytest.raises(RemoteError) as err:
        push(flaky_orthanc.dicomweb, series.files, options=FAST)
    assert "HTTP 503 after 3 attempt(s)" in str(err.value) and "0 of 8 instance(s) were stored" in str(err.value)
    assert flaky_orthanc.requests["POST"] == 3  # FAST: 2 retries after the first try, no more
    with pytest.raises(RemoteError, match="HTTP 503 after 3 attempt"):
        pull(flaky_orthanc.dicomweb, "1.2.3", out_dir=tmp_path / "out", options=FAST)
    assert flaky_orthanc.requests["GET"] == 3
    assert orthanc.get_json("/statistics")["CountInstances"] == before  # type: ignore[index]
    # two batches of 4: the first is stored, then the network fails for good: the push is not reported done
    monkeypatch.setattr("medpipe.io.dicomweb.store.BATCH_FILES", 4)
    flaky_orthanc.fail_after(1)
    with pytest.raises(RemoteError) as err:
        push(flaky_orthanc.dicomweb, series.files, options=FAST)
    assert "4 of 8 instance(s) were stored before this failure, the others were not" in str(err.value)
    assert orthanc.get_json("/statistics")["CountInstances"] == before + 4  # type: ignore[index]
