"""CUDA inference: fp16 stitching of a 2-fold x TTA ensemble matches CPU; the out-of-memory ladder (device ->
buffered -> host) records its rung; peak device memory in the sidecar. Skipped on machines without a GPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

import medpipe.inference.predictor as predictor_module
from medpipe.inference.batch import infer
from medpipe.inference.inputs import collect_inputs, load_case
from medpipe.inference.predictor import Predictor
from tests.inference_models import save_fold_folders

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_fp16_ensemble_on_cuda_matches_cpu(tmp_path: Path, phantom_files: tuple) -> None:
    cv = save_fold_folders(tmp_path / "cv")
    image = phantom_files[0]
    masks = {}
    for dev in ("cuda", "cpu"):
        res = infer(cv, [image], tmp_path / dev, device=dev, tta="all", save_probabilities=True)
        assert res.cases[0].status == "ok", res.cases[0].error
        masks[dev] = np.asarray(nib.load(str(tmp_path / dev / "case_a.nii.gz")).dataobj)
        side = json.loads((tmp_path / dev / "case_a.json").read_text())
        if dev == "cuda":
            assert side["stitch_dtype"] == "float16" and side["memory_rung"] == "device"
            assert side["memory"]["device_peak_mb"] > 0
    assert (masks["cuda"] != masks["cpu"]).mean() < 1e-3


@pytest.mark.parametrize(("fail_on", "rung"), [({"device"}, "buffered"), ({"device", "buffered"}, "host")])
def test_out_of_memory_ladder(tmp_path: Path, phantom_files: tuple, monkeypatch: pytest.MonkeyPatch,
                              fail_on: set[str], rung: str) -> None:
    real = predictor_module.sliding_window_inference

    def failing(*args: Any, **kwargs: Any) -> Any:  # injects an OOM on the chosen rungs, then runs MONAI's
        name = "device" if str(kwargs["device"]).startswith("cuda") else (
            "buffered" if kwargs.get("buffer_steps") else "host")
        if name in fail_on:
            raise torch.cuda.OutOfMemoryError("injected")
        return real(*args, **kwargs)

    cv = save_fold_folders(tmp_path / "cv", 1)
    seg = Predictor(cv, "cuda")
    case = load_case(collect_inputs([phantom_files[0]], seg.cfg.channels)[0], seg.cfg.in_channels, None)
    plain = seg.predict(case)
    monkeypatch.setattr(predictor_module, "sliding_window_inference", failing)
    laddered = seg.predict(case)
    assert laddered.details.memory_rung == rung
    assert (laddered.labels != plain.labels).mean() < 1e-3
