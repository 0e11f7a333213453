"""CUDA paths: AMP training steps, GPU inference equal to CPU inference. Skipped on machines without a GPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medpipe.cli import app
from tests.cli.test_cli import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_amp_training_and_gpu_inference_match_cpu(tmp_path: Path) -> None:
    data = tmp_path / "kits"
    for case in sorted((REPO / "sample_data" / "kits").iterdir())[:4]:
        shutil.copytree(case, data / case.name)
    cfg = tiny_config(tmp_path, data)
    res = runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "run"), "--device", "cuda"])
    assert res.exit_code == 0, res.output
    assert "on cuda" in res.output
    val = json.loads((tmp_path / "run" / "split.json").read_text())["val"][0]
    image = data / val / "imaging.nii.gz"
    masks = {}
    for dev in ("cuda", "cpu"):
        out = tmp_path / f"pred_{dev}"
        res = runner.invoke(app, ["infer", str(tmp_path / "run"), str(image), "-o", str(out), "--device", dev])
        assert res.exit_code == 0, res.output
        masks[dev] = np.asarray(nib.load(str(out / f"{val}.nii.gz")).dataobj)
        side = json.loads((out / f"{val}.json").read_text())
        assert side["device"] == dev
    # fp16 autocast on the GPU may flip a few boundary voxels, nothing more
    assert (masks["cuda"] != masks["cpu"]).mean() < 1e-3
