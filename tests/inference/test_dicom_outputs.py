"""`medpipe infer --format nifti,dicom-seg,rtstruct`: DICOM outputs beside the NIfTI mask, on the same voxels, with
the model's label codes, recorded in the sidecar; refusals (NIfTI input, RTSTRUCT on a repaired grid) are one
line and exit code 1; resume notices missing DICOM outputs; patient data reaches the SEG but nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from medpipe.cli import app
from medpipe.config import config_from_dict
from medpipe.models.checkpoint import save_checkpoint
from medpipe.models.factory import build_model
from tests.dicom_factory import write_series
from tests.dicom_readback import assert_points_on_mask, dciodvfy_errors, seg_points_pydicom

runner = CliRunner()
SENTINEL = "ZZPHISENTINEL"
NAMES = {0: "background", 1: "organ"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny CT model whose label 1 carries its own code and colour (they travel in the checkpoint)."""
    cfg = config_from_dict({
        "name": "tiny-seg-test",
        "labels": {0: "background", 1: {"name": "organ", "type": "SCT:64033007:Kidney", "color": [255, 0, 0]}},
        "transforms": {"spacing_mm": [1.0, 1.0, 2.0], "crop_foreground": False, "hu_window": [-1000.0, 1000.0]},
        "model": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
        "inference": {"roi_size_vox": [96, 96, 16], "sw_batch_size": 2, "overlap": 0.0},
    })
    path = tmp_path_factory.mktemp("model") / "best.pt"
    torch.manual_seed(0)  # deterministic random weights: some foreground on the test series
    save_checkpoint(path, build_model(cfg), cfg)
    return path


def _infer(checkpoint: Path, src: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["infer", str(checkpoint), str(src), "-o", str(out), "--device", "cpu", *extra])


def test_infer_writes_seg_and_rtstruct_beside_the_mask(tmp_path: Path, checkpoint: Path) -> None:
    write_series(tmp_path / "dcm", orientation="sagittal", instance_order="shuffled", intercept=-1024.0)
    out = tmp_path / "out"
    res = _infer(checkpoint, tmp_path / "dcm", out, "--format", "nifti,dicom-seg,rtstruct")
    assert res.exit_code == 0, res.output
    case = "series3_synthetic_CT"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{case}{s}" for s in (".nii.gz", ".json", ".seg.dcm", ".rtstruct.dcm", ".lesions.csv"))
    side = json.loads((out / f"{case}.json").read_text())
    outputs = side["outputs"]
    assert outputs["nifti"] == f"{case}.nii.gz"
    assert outputs["dicom-seg"]["file"] == f"{case}.seg.dcm" and outputs["dicom-seg"]["grid"] == "source"
    assert outputs["rtstruct"]["file"] == f"{case}.rtstruct.dcm"
    points, names, _ = seg_points_pydicom(out / f"{case}.seg.dcm")
    assert len(points) > 0
    assert_points_on_mask(points, names, out / f"{case}.nii.gz", NAMES)
    seg = pydicom.dcmread(out / f"{case}.seg.dcm")
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "organ" and segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"
    # the config's colour (red), as CIELab in the SEG (read back to RGB with highdicom) and as RGB in the RTSTRUCT
    lab = hd.color.CIELabColor.from_dicom_value(segment.RecommendedDisplayCIELabValue)
    assert np.allclose(lab.to_rgb(), (255, 0, 0), atol=1)
    rt = pydicom.dcmread(out / f"{case}.rtstruct.dcm")
    assert list(rt.ROIContourSequence[0].ROIDisplayColor) == [255, 0, 0]
    algo = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert "tiny-seg-test" in str(algo.AlgorithmParameters) and side["model"]["sha256"] in str(algo.AlgorithmParameters)
    for name in (f"{case}.seg.dcm", f"{case}.rtstruct.dcm"):
        errors = dciodvfy_errors(out / name)
        assert not errors, (name, errors)


def test_labelmap_seg_and_resume_adds_missing_outputs(tmp_path: Path, checkpoint: Path) -> None:
    write_series(tmp_path / "dcm", intercept=-1024.0)
    out = tmp_path / "out"
    assert _infer(checkpoint, tmp_path / "dcm", out).exit_code == 0
    assert not list(out.glob("*.dcm"))
    res = _infer(checkpoint, tmp_path / "dcm", out, "--format", "dicom-seg", "--seg-type", "labelmap")
    assert res.exit_code == 0, res.output
    seg = next(out.glob("*.seg.dcm"))
    assert pydicom.dcmread(seg).SegmentationType == "LABELMAP"
    mtime = seg.stat().st_mtime_ns
    res = _infer(checkpoint, tmp_path / "dcm", out, "--format", "dicom-seg")
    assert res.exit_code == 0 and "skipped" in res.output and seg.stat().st_mtime_ns == mtime


def test_nifti_input_with_dicom_format_is_one_line_error(tmp_path: Path, checkpoint: Path) -> None:
    img = nib.Nifti1Image(np.full((8, 8, 4), -500, np.int16), np.diag([1.0, 1.0, 2.0, 1.0]))
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    res = _infer(checkpoint, tmp_path / "ct.nii.gz", tmp_path / "out", "--format", "nifti,dicom-seg")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "needs a DICOM series" in " ".join(res.output.split())
    assert len(res.output.strip().splitlines()) <= 2  # one message (rich may wrap it once)
    res = _infer(checkpoint, tmp_path / "ct.nii.gz", tmp_path / "out", "--format", "nifti,dicom")
    assert res.exit_code == 1 and "unknown output format dicom" in res.output


def test_repaired_grid_gets_a_seg_and_no_rtstruct(tmp_path: Path, checkpoint: Path) -> None:
    write_series(tmp_path / "dcm", dz_list=[2.5, 2.5, 5.0, 2.5, 2.5, 2.5, 2.5], intercept=-1024.0)
    out = tmp_path / "out"
    res = _infer(checkpoint, tmp_path / "dcm", out, "--allow-uneven", "--format", "rtstruct")
    assert res.exit_code == 1 and "RTSTRUCT refused" in " ".join(res.output.split())
    assert not list(out.glob("*"))
    res = _infer(checkpoint, tmp_path / "dcm", out, "--allow-uneven", "--format", "dicom-seg")
    assert res.exit_code == 0, res.output
    side = json.loads(next(out.glob("*.json")).read_text())
    assert side["outputs"]["dicom-seg"]["grid"] == "repaired"
    points, names, _ = seg_points_pydicom(next(out.glob("*.seg.dcm")))
    assert_points_on_mask(points, names, next(out.glob("*.nii.gz")), NAMES)


def test_patient_data_reaches_the_seg_and_nothing_else(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / f"{SENTINEL}_MRN_12345" / "study"
    write_series(folder, patient_name=f"{SENTINEL}^John", patient_id=f"{SENTINEL}-ID", intercept=-1024.0)
    out = tmp_path / "out"
    res = _infer(checkpoint, folder, out, "--format", "nifti,dicom-seg,rtstruct")
    assert res.exit_code == 0, res.output
    for path in out.iterdir():
        assert SENTINEL not in path.name
        holds = SENTINEL.encode() in path.read_bytes()
        assert holds == path.name.endswith(".dcm"), path.name  # the DICOM objects carry the patient module
    assert SENTINEL not in res.output.replace(str(folder), "")
