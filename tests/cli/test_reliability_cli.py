"""BAD-INPUTS cases through the command line, each built from scratch: D2/D12 (a series whose slices differ:
every volume named, the first offending file, and the bracketed list survives rich), the README's main job run a
second time (a finished job recognised at once, an unfinished one named, --force), R2 (out of memory: one line,
and in a batch only that case fails)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medpipe.cli import app
from medpipe.errors import OutputError
from medpipe.io.memory import is_out_of_memory, out_of_memory_message
from medpipe.pipeline import AlreadyFinished, check_run_folder
from tests.conftest import REPO, make_affine, save_nifti
from tests.dicom_factory import ORIENTATIONS, write_series

runner = CliRunner()


def test_a_series_with_a_localizer_slice_names_each_volume_and_the_offending_file(tmp_path: Path) -> None:
    def localizer(ds, k: int) -> None:
        if k == 5:
            ds.ImageOrientationPatient = list(ORIENTATIONS["sagittal"])

    series = write_series(tmp_path / "in", edit=localizer, description="abdomen")
    import pydicom

    odd = next(f for f in series.files
               if float(pydicom.dcmread(f, stop_before_pixels=True).ImageOrientationPatient[0]) == 0.0)
    res = runner.invoke(app, ["convert", str(series.folder), "-o", str(tmp_path / "out"), "--series", "3"])
    assert res.exit_code == 1
    text = " ".join(res.output.split())
    assert "series 3 holds 2 volumes: [series 3-1 'abdomen': CT, 7 images 16x12, axial" in text, text
    assert "[series 3-2 'abdomen': CT, 1 images 16x12, sagittal" in text
    assert f"first file that differs from the rest: {odd.name}" in text
    assert "Traceback" not in res.output


def test_a_finished_job_is_recognised_at_once_and_force_starts_over(tmp_path: Path) -> None:
    run = tmp_path / "job"
    (run / "report").mkdir(parents=True)
    (run / "report" / "summary.json").write_text("{}")
    (run / "model").mkdir()
    (run / "model" / "last.pt").write_bytes(b"x")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(AlreadyFinished):
        check_run_folder(run, resume=False, force=False)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text((REPO / "pipelines" / "sample-ct.yaml").read_text())
    res = runner.invoke(app, ["run", str(cfg), "--out", str(run), "--device", "cpu"])
    assert res.exit_code == 0 and "already done" in res.output and "report.html" in res.output
    check_run_folder(run, resume=False, force=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # only what medpipe wrote is removed


def test_an_unfinished_job_is_named_before_any_work(tmp_path: Path) -> None:
    run = tmp_path / "job"
    (run / "model").mkdir(parents=True)
    (run / "model" / "last.pt").write_bytes(b"x")
    with pytest.raises(OutputError, match=r"folder holds an unfinished training run.*--resume"):
        check_run_folder(run, resume=False, force=False)
    check_run_folder(run, resume=True, force=False)  # a resume is allowed through


def test_a_failed_allocation_becomes_one_line() -> None:
    with pytest.raises(MemoryError) as exc:
        np.empty(2**50, dtype=np.uint8)  # a real failed allocation (1 PiB)
    assert is_out_of_memory(exc.value)
    line = out_of_memory_message(exc.value, "segmenting (512 x 512 x 400 voxels)")
    assert line.startswith("out of memory while segmenting (512 x 512 x 400 voxels) (Unable to allocate 1")
    assert "\n" not in line
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.slow
def test_out_of_memory_fails_only_that_case_in_a_batch(tmp_path: Path) -> None:
    from medpipe.inference.batch import infer
    from medpipe.training.run import train
    from tests.datasets.test_layouts import make_layout
    from tests.training.test_train import tiny

    root = make_layout(tmp_path / "kits", "kits", n=4)
    train(tiny(root, "kits", training={"epochs": 1}), tmp_path / "run", device="cpu")
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = inputs / "good.nii.gz"
    good.write_bytes((root / "case_00000" / "imaging.nii.gz").read_bytes())
    # 8 voxels a side at 3 m spacing: resampled to the model's 1 x 1 x 2 mm grid it would need terabytes
    save_nifti(inputs / "huge.nii.gz", np.zeros((8, 8, 8), np.float32) - 1000, make_affine(spacing=(3e3,) * 3))
    result = infer(tmp_path / "run", [inputs], tmp_path / "out", device="cpu", allow_non_hu=True)
    by_id = {c.case_id: c for c in result.cases}
    assert by_id["good"].status == "ok"
    assert by_id["huge"].status == "failed"
    err = by_id["huge"].error or ""
    assert "huge.nii.gz: out of memory while segmenting (8 x 8 x 8 voxels)" in err and "--sw-batch-size 1" in err
    assert "\n" not in err
    assert json.loads((tmp_path / "out" / "good.json").read_text())["status"] == "ok"
