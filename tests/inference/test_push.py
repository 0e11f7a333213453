"""``infer(..., push=...)`` against the real Orthanc: store a series, pull it, segment it, push the case's SEG
into the source study and find it there by QIDO; the outcome is recorded in the sidecar, a confirmed push is
not repeated, and a failed push fails the case without losing the mask."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from medpipe.config import config_from_dict
from medpipe.inference.batch import infer
from medpipe.inference.push import PushTarget
from medpipe.inference.sidecar import CasePush
from medpipe.io.dicomweb import DicomwebOptions, pull, push
from medpipe.models.checkpoint import save_checkpoint
from medpipe.models.factory import build_model
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
