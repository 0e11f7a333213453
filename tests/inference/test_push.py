"""``infer(..., push=...)`` against the real Orthanc: store a series, pull it, segment it, push the case's SEG
into the source study and find it there by QIDO; the outcome is recorded in the sidecar, a confirmed push is
not repeated, and a failed push fails the case without losing the mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medpipe.config import config_from_dict
from medpipe.inference.batch import infer
from medpipe.inference.push import PushTarget
from medpipe.inference.sidecar import CasePush
from medpipe.io.dicomweb import DicomwebOptions, pull, push
from medpipe.models.checkpoint import save_checkpoint
from medpipe.models.factory import build_model
from tests.conftest import SHARED_DATA
from tests.io.test_dicomweb import make_seg, study_modules
from tests.services.orthanc import PASSWORD, USER, Orthanc, free_port

FAST = DicomwebOptions(retries=1, backoff_s=0.01, timeout_s=10)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny CT model (the push does not depend on the weights)."""
    cfg = config_from_dict({
        "labels": {0: "background", 1: "organ"},
        "transforms": {"spacing_mm": [1.0, 1.0, 2.0], "crop_foreground": False, "hu_window": [-1000.0, 1000.0]},
        "model": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
        "inference": {"roi_size_vox": [32, 32, 16], "sw_batch_size": 2, "overlap": 0.0},
    })
    path = tmp_path_factory.mktemp("model") / "best.pt"
    save_checkpoint(path, build_model(cfg), cfg)
    return path


@pytest.mark.slow
def test_store_pull_infer_push_and_find_the_seg(orthanc: Orthanc, checkpoint: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.dicom_factory import write_series

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MEDPIPE_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDPIPE_DICOMWEB_PASSWORD", PASSWORD)
    series = write_series(tmp_path / "src", seed=301, intercept=-1024.0, edit=study_modules)
    study = str(pydicom.dcmread(series.files[0]).StudyInstanceUID)
    assert push(orthanc.dicomweb, series.files, options=FAST).ok
    pulled = pull(orthanc.dicomweb, study, out_dir=tmp_path / "pulled", options=FAST)
    local = pulled.series[0].folder
    out = tmp_path / "out"
    (first,) = infer(checkpoint, [local], out, device="cpu").cases
    assert first.status == "ok" and first.push is None
    # the DICOM SEG writer (medpipe infer --format dicom-seg) writes <case>.seg.dcm beside the mask; a SEG built
    # here stands in for it, referencing the pulled series
    seg = make_seg(sorted(local.glob("*.dcm")), out / f"{first.case_id}.seg.dcm")
    before = orthanc.get_json("/statistics")["CountInstances"]  # type: ignore[index]
    target = PushTarget(orthanc.dicomweb, FAST)
    (case,) = infer(checkpoint, [local], out, device="cpu", push=target).cases
    assert case.status == "skipped" and case.push is not None and case.push.ok
    assert case.push.sop_instance_uid == seg.SOPInstanceUID and case.push.study_uid == study
    side = json.loads((out / f"{case.case_id}.json").read_text())
    assert side["dicomweb_push"]["status"] == "ok" and side["dicomweb_push"]["server"] == orthanc.dicomweb
    assert PASSWORD not in json.dumps(side)
    assert CasePush.from_json(side["dicomweb_push"]) == case.push
    assert orthanc.get_json("/statistics")["CountInstances"] == before + 1  # type: ignore[index]
    found = pull(orthanc.dicomweb, study, seg.SeriesInstanceUID, out_dir=tmp_path / "seg", options=FAST)
    back = pydicom.dcmread(next(found.series[0].folder.glob("*.dcm")))
    assert back.Modality == "SEG" and back.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    # a confirmed push of the same SEG to the same server is not repeated
    (again,) = infer(checkpoint, [local], out, device="cpu", push=target).cases
    assert again.push is not None and again.push.ok and again.status == "skipped"
    # a server that cannot be reached fails the case (the mask stays) and the sidecar says so
    dead = PushTarget(f"http://127.0.0.1:{free_port()}/dicom-web", FAST)
    (down,) = infer(checkpoint, [local], out, device="cpu", push=dead).cases
    assert down.status == "failed" and down.mask is not None and down.mask.is_file()
    assert down.error and "not pushed" in down.error and "could not connect after 2 attempt(s)" in down.error
    side = json.loads((out / f"{case.case_id}.json").read_text())
    assert side["dicomweb_push"]["status"] == "failed" and side["status"] == "ok"
    (out / f"{case.case_id}.seg.dcm").unlink()
    (noseg,) = infer(checkpoint, [local], out, device="cpu", push=target).cases
    assert noseg.status == "failed" and "--format dicom-seg" in (noseg.error or "")


@pytest.mark.slow
def test_cli_pull_infer_seg_push_round_trip(orthanc: Orthanc, checkpoint: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole clinical loop through the command line: `medpipe pull` a study from the PACS, `medpipe infer
    --format nifti,dicom-seg --push URL`, then the SEG written by medpipe is in the study and references the
    source series; credentials come from the environment and never appear in the output."""
    from typer.testing import CliRunner

    from medpipe.cli import app
    from tests.dicom_factory import write_series

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MEDPIPE_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDPIPE_DICOMWEB_PASSWORD", PASSWORD)
    series = write_series(tmp_path / "src", seed=302, intercept=-1024.0, edit=study_modules)
    study = str(pydicom.dcmread(series.files[0]).StudyInstanceUID)
    assert push(orthanc.dicomweb, series.files, options=FAST).ok
    runner = CliRunner()
    res = runner.invoke(app, ["pull", orthanc.dicomweb, "--study", study, "-o", str(tmp_path / "pulled")])
    assert res.exit_code == 0, res.output
    (local,) = [p for p in (tmp_path / "pulled").rglob("*") if p.is_dir() and any(p.glob("*.dcm"))]
    out = tmp_path / "out"
    res = runner.invoke(app, ["infer", str(checkpoint), str(local), "-o", str(out), "--device", "cpu",
                              "--format", "nifti,dicom-seg", "--push", orthanc.dicomweb])
    assert res.exit_code == 0, res.output
    assert PASSWORD not in res.output
    (seg_file,) = out.glob("*.seg.dcm")
    seg = pydicom.dcmread(seg_file)
    side = json.loads(seg_file.with_name(seg_file.name.replace(".seg.dcm", ".json")).read_text())
    assert side["dicomweb_push"]["status"] == "ok" and side["outputs"]["dicom-seg"]["file"] == seg_file.name
    found = pull(orthanc.dicomweb, study, seg.SeriesInstanceUID, out_dir=tmp_path / "seg", options=FAST)
    back = pydicom.dcmread(next(found.series[0].folder.glob("*.dcm")))
    assert back.Modality == "SEG" and back.StudyInstanceUID == study
    assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid


MR_SAGITTAL = SHARED_DATA / "dicom" / "mr-sagittal-positions" / "HFS"


@pytest.mark.realdata
@pytest.mark.slow
def test_real_series_store_pull_infer_push_then_the_study_holds_the_seg(orthanc: Orthanc, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's round trip with a real scanner series (the shared sagittal MR, 35 slices): store it in
    Orthanc, `medpipe pull` it, `medpipe infer --format nifti,dicom-seg --push`, then QIDO-search the study for
    SEG series with an independent client: medpipe's SEG is there, references the source series, and each of its
    frames references an instance of that series at its own position; read back, it lands on the NIfTI mask."""
    import requests
    import torch
    from dicomweb_client import DICOMwebClient
    from typer.testing import CliRunner

    from medpipe.cli import app
    from tests.dicom_readback import assert_points_on_mask, seg_points_pydicom

    if not MR_SAGITTAL.is_dir():
        pytest.skip("shared sagittal MR not present")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MEDPIPE_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDPIPE_DICOMWEB_PASSWORD", PASSWORD)
    stored = push(orthanc.dicomweb, [MR_SAGITTAL], options=FAST)
    assert stored.ok and stored.n_stored == 35
    study, source_series = stored.instances[0].study_uid, stored.instances[0].series_uid
    cfg = config_from_dict({
        "name": "tiny-mr-test", "modality": "MR", "channels": ["t1"],
        "labels": {0: "background", 1: {"name": "brain", "type": "SCT:12738006:Brain"}},
        "transforms": {"spacing_mm": [2.0, 2.0, 4.0], "intensity": "zscore_nonzero", "crop_foreground": False},
        "model": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
        "inference": {"roi_size_vox": [64, 64, 16], "sw_batch_size": 2, "overlap": 0.0},
    })
    torch.manual_seed(0)  # deterministic random weights: foreground on part of the series
    model = tmp_path / "model" / "best.pt"
    model.parent.mkdir()
    save_checkpoint(model, build_model(cfg), cfg)
    runner = CliRunner()
    res = runner.invoke(app, ["pull", orthanc.dicomweb, "--study", study, "--series", source_series,
                              "-o", str(tmp_path / "pulled")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    res = runner.invoke(app, ["infer", str(model), str(tmp_path / "pulled" / source_series), "-o", str(out),
                              "--device", "cpu", "--format", "nifti,dicom-seg", "--push", orthanc.dicomweb])
    assert res.exit_code == 0, res.output
    (seg_file,) = out.glob("*.seg.dcm")
    (mask,) = out.glob("*.nii.gz")
    points, names, _ = seg_points_pydicom(seg_file)
    assert len(points) > 0
    assert_points_on_mask(points, names, mask, {0: "background", 1: "brain"})
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    client = DICOMwebClient(orthanc.dicomweb, session=session)
    found = client.search_for_series(study_instance_uid=study, search_filters={"Modality": "SEG"})
    seg_uid = str(pydicom.dcmread(seg_file, stop_before_pixels=True).SeriesInstanceUID)
    assert seg_uid in [s["0020000E"]["Value"][0] for s in found]
    (back,) = client.retrieve_series(study, seg_uid)
    assert back.StudyInstanceUID == study and back.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series
    source = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
              for f in (tmp_path / "pulled" / source_series).glob("*.dcm")}
    on_server = {str(item["00080018"]["Value"][0]) for item in client.search_for_instances(study, source_series)}
    assert set(source) == on_server and len(on_server) == 35
    for frame in back.PerFrameFunctionalGroupsSequence:
        (ref,) = frame.DerivationImageSequence[0].SourceImageSequence
        src = pydicom.dcmread(source[str(ref.ReferencedSOPInstanceUID)], stop_before_pixels=True)
        assert np.allclose(frame.PlanePositionSequence[0].ImagePositionPatient, src.ImagePositionPatient, atol=1e-3)


def test_a_seg_of_a_series_without_study_uid_is_not_pushed(checkpoint: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Some real series lack Study/Series Instance UIDs (the shared JPEG 2000 CT). Their SEG is written with
    derived UIDs, but `--push` does not send it into a made-up study: the case fails with a clear reason before
    any request (the URL here has no server behind it, so an attempt would read "could not connect")."""
    from tests.dicom_factory import write_series

    def no_study_uid(ds: pydicom.Dataset, k: int) -> None:
        ds.StudyInstanceUID = ""

    monkeypatch.setenv("HOME", str(tmp_path))
    write_series(tmp_path / "src", seed=303, intercept=-1024.0, edit=no_study_uid)
    out = tmp_path / "out"
    target = PushTarget(f"http://127.0.0.1:{free_port()}/dicom-web", FAST)
    (case,) = infer(checkpoint, [tmp_path / "src"], out, device="cpu", formats=("nifti", "dicom-seg"),
                    push=target).cases
    assert case.status == "failed" and case.push is not None and not case.push.ok
    assert "the source images have no StudyInstanceUID" in (case.error or "")
    assert "could not connect" not in (case.error or "")
    assert case.mask is not None and case.mask.is_file() and (out / f"{case.case_id}.seg.dcm").is_file()
    side = json.loads((out / f"{case.case_id}.json").read_text())
    assert side["outputs"]["dicom-seg"]["derived_uids"] == ["StudyInstanceUID"]
    assert side["dicomweb_push"]["status"] == "failed" and "not sent" in side["dicomweb_push"]["reason"]
