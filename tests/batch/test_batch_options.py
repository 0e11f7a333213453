"""`medpipe batch` takes infer's options (issue 13: "All of infer's options (folds, TTA, formats, probabilities)
apply"): a fold ensemble with mirror TTA and probability/uncertainty maps, through the ledger, gives the same
masks and maps as `medpipe infer` with the same options."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medpipe.cli import app
from tests.batch_cases import batch_cmd, env, tiny_cases, tiny_checkpoint

runner = CliRunner()
OPTIONS = ["--folds", "0,1", "--tta", "all", "--save-probabilities", "--save-uncertainty", "--min-lesion-ml", "0.5"]


@pytest.mark.slow
def test_batch_with_folds_tta_and_maps_matches_infer(tmp_path: Path) -> None:
    folds = tmp_path / "cv"
    for k in (0, 1, 2):  # fold 2 is left out by --folds 0,1
        tiny_checkpoint(folds / f"fold_{k}")
    inputs = tiny_cases(tmp_path / "in", 2)
    out = tmp_path / "batch"
    first = [o for o in OPTIONS if o != "--save-uncertainty"]
    res = subprocess.run(batch_cmd(folds, inputs, out, *first), env=env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not list((out / "predictions").glob("*_uncertainty.nii.gz"))
    done1 = {p.stem: json.loads(p.read_text()) for p in (out / "ledger" / "done").glob("*.json")}
    # asking for one more map: the cases are not done without it, so they are computed again
    res = subprocess.run(batch_cmd(folds, inputs, out, *OPTIONS), env=env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    done2 = {p.stem: json.loads(p.read_text()) for p in (out / "ledger" / "done").glob("*.json")}
    assert sorted(done2) == sorted(done1) == ["case000", "case001"]
    assert all(done2[c]["finished_at"] > done1[c]["finished_at"] for c in done1)
    assert len(list((out / "predictions").glob("*_uncertainty.nii.gz"))) == 2
    ref = runner.invoke(app, ["infer", str(folds), str(inputs), "-o", str(tmp_path / "infer"), "--device", "cpu",
                              *OPTIONS])
    assert ref.exit_code == 0, ref.output
    for case in ("case000", "case001"):
        side = json.loads((out / "predictions" / f"{case}.json").read_text())
        expected = json.loads((tmp_path / "infer" / f"{case}.json").read_text())
        ens = side["ensemble"]
        assert ens["folds"] == [0, 1] and ens["tta"] == "all" and side["model"]["n_models"] == 2
        assert side["config_hash"] == expected["config_hash"]  # TTA and the lesion minimum are part of it
        for suffix in (".nii.gz", "_probabilities.nii.gz", "_uncertainty.nii.gz"):
            got = np.asarray(nib.load(str(out / "predictions" / f"{case}{suffix}")).dataobj)
            want = np.asarray(nib.load(str(tmp_path / "infer" / f"{case}{suffix}")).dataobj)
            assert np.array_equal(got, want), suffix
    # the same command again computes nothing
    before = {p.name: p.stat().st_mtime_ns for p in (out / "predictions").iterdir()}
    res = subprocess.run(batch_cmd(folds, inputs, out, *OPTIONS), env=env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "predictions").iterdir()} == before


def test_batch_refuses_dicom_formats_for_nifti_inputs_and_bad_options(tmp_path: Path) -> None:
    model = tiny_checkpoint(tmp_path / "run")
    inputs = tiny_cases(tmp_path / "in", 1)
    res = runner.invoke(app, ["batch", str(model), str(inputs), "-o", str(tmp_path / "o"), "--format", "bogus"])
    assert res.exit_code == 1 and "unknown output format" in res.output
    res = runner.invoke(app, ["batch", str(model), str(inputs), "-o", str(tmp_path / "o"), "--folds", "x"])
    assert res.exit_code == 1 and "--folds" in res.output
    res = runner.invoke(app, ["batch", str(model), str(inputs), "-o", str(tmp_path / "o"), "--device", "cpu",
                              "--format", "dicom-seg"])
    assert res.exit_code == 1 and "DICOM" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o" / "ledger").exists() or not list((tmp_path / "o" / "logs").glob("w*.log"))
    res = runner.invoke(app, ["batch", str(model), str(inputs), "-o", str(tmp_path / "g"), "--workers", "2",
                              "--gpus", "0,1"])
    assert res.exit_code == 1 and "--workers 2 and --gpus 0,1 both given" in " ".join(res.output.split())
    assert not (tmp_path / "g").exists()  # refused before the ledger is made
