"""``task: classification`` through the stages: balanced sampling, losses, a tiny classifier that trains, resumes
exactly and infers ``predictions.csv``, and ``medpipe run`` scoring a held-out split with a known answer.

The data: small CT-like volumes (16 x 16 x 10, air border, soft tissue with noise); the positive cases hold a
bright 4 x 4 x 3 block (label 2 of the segmentation), so a classifier can learn the answer in a few steps.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from medpipe.config import PipelineConfig, config_from_dict
from medpipe.training.classify import ClassificationLoss, validation_score
from medpipe.training.data import EpochSampler, balanced_weights
from tests.conftest import REPO, make_affine, save_nifti

SHAPE = (16, 16, 10)


def make_blocks(root: Path, n: int = 16, seed: int = 0) -> Path:
    """``n`` KiTS-layout cases; even indices hold the bright block (label 2)."""
    rng = np.random.default_rng(seed)
    affine = make_affine(spacing=(1.5, 1.5, 3.0))
    for i in range(n):
        img = np.full(SHAPE, -1000.0)
        img[2:-2, 2:-2, 1:-1] = 40.0
        lab = np.zeros(SHAPE, np.uint8)
        lab[2:-2, 2:-2, 1:-1] = 1
        if i % 2 == 0:
            x, y, z = rng.integers(3, 9), rng.integers(3, 9), rng.integers(2, 5)
            img[x:x + 4, y:y + 4, z:z + 3] = 250.0
            lab[x:x + 4, y:y + 4, z:z + 3] = 2
        img[2:-2, 2:-2, 1:-1] += rng.normal(0.0, 10.0, (SHAPE[0] - 4, SHAPE[1] - 4, SHAPE[2] - 2))
        (root / f"case_{i:05d}").mkdir(parents=True, exist_ok=True)
        save_nifti(root / f"case_{i:05d}" / "imaging.nii.gz", img, affine, np.int16)
        save_nifti(root / f"case_{i:05d}" / "segmentation.nii.gz", lab, affine, np.uint8)
    return root


def tiny_cls(root: Path, **sections: dict[str, Any]) -> PipelineConfig:
    raw: dict[str, Any] = {
        "task": "classification", "classes": ["clear", "block"], "modality": "CT", "channels": ["CT"],
        "labels": {0: "background", 1: "body", 2: "block"},
        "data": {"root": str(root), "format": "kits", "val_fraction": 0.25,
                 "class_from_label": {"label": 2, "min_voxels": 5}},
        "transforms": {"spacing_mm": [1.5, 1.5, 3.0], "patch_size_vox": [16, 16, 8], "crop_foreground": False,
                       "augment": False},
        "model": {"arch": "resnet18", "width_factor": 0.125, "norm": "batch"},
        "training": {"epochs": 2, "iterations_per_epoch": 3, "batch_size": 4, "val_every": 1, "lr": 0.01,
                     "num_workers": 0},
    }
    for key, value in sections.items():
        raw[key] = {**raw[key], **value}
    return config_from_dict(raw)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


# ----- fast --------------------------------------------------------------------------------------------------
def test_balanced_sampler_balances_and_splits_one_stream_between_ranks() -> None:
    classes = [0] * 8 + [1] * 2
    w = balanced_weights(classes)
    assert w[0] == pytest.approx(1 / 8) and w[-1] == pytest.approx(1 / 2)
    data = list(range(10))
    drawn = list(EpochSampler(data, 1, 0, seed=3, samples_per_rank=4000, weights=w))
    share = np.mean([classes[i] for i in drawn])
    assert 0.46 < share < 0.54  # unweighted it would be 0.2
    ranks = [EpochSampler(data, 2, r, seed=3, samples_per_rank=2000, weights=w) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(0)
    assert sorted(list(ranks[0]) + list(ranks[1])) == sorted(drawn)  # the same stream, shared out
    again = EpochSampler(data, 1, 0, seed=3, samples_per_rank=4000, weights=w)
    again.set_epoch(1)
    assert list(again) != drawn  # a new epoch, a new draw


def test_losses_and_the_validation_score() -> None:
    y = torch.tensor([0, 1, 1])
    good, bad = torch.tensor([[4.0, -4.0], [-4.0, 4.0], [-3.0, 3.0]]), torch.tensor([[-4.0, 4.0], [4.0, -4.0],
                                                                                      [3.0, -3.0]])
    for loss in ("ce", "focal"):
        fn = ClassificationLoss(tiny_cls(Path("."), training={"loss": loss}))
        assert float(fn(good, y)) < 0.01 < float(fn(bad, y))
    assert validation_score({"auc": float("nan"), "accuracy": 0.75}) == 0.75
    assert validation_score({"auc": 0.9, "accuracy": 0.5}) == 0.9


# ----- training, resume, inference ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blocks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_blocks(tmp_path_factory.mktemp("cls") / "blocks")


@pytest.mark.slow
def test_classifier_trains_resumes_exactly_and_infers(tmp_path: Path, blocks: Path) -> None:
    from medpipe.inference.batch import infer
    from medpipe.training.run import train

    cfg = tiny_cls(blocks)
    res = train(cfg, tmp_path / "a", device="cpu")
    run = tmp_path / "a"
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_auc", "val_accuracy"} <= set(header) and not [h for h in header if "dice" in h]
    assert set(res.last_dice) == {"auc", "accuracy"} and (run / "best.pt").is_file()
    split = json.loads((run / "split.json").read_text())
    assert split["classes"] == {f"case_{i:05d}": int(i % 2 == 0) for i in range(16)}
    # exact resume: epoch 2 replayed from the epoch-1 checkpoint gives the same weights
    resumed = tmp_path / "b"
    shutil.copytree(run, resumed)
    (resumed / "previous.pt").replace(resumed / "last.pt")
    train(cfg, resumed, device="cpu", resume=True)
    for k, v in weights(run / "last.pt").items():
        assert torch.allclose(v, weights(resumed / "last.pt")[k], atol=1e-6), k
    # inference: predictions.csv (probabilities summing to 1) and a sidecar per case; a bad input fails alone
    val = [blocks / c / "imaging.nii.gz" for c in split["val"]]
    staged = []
    for p in val:
        staged.append(tmp_path / "in" / f"{p.parent.name}.nii.gz")
        staged[-1].parent.mkdir(exist_ok=True)
        staged[-1].symlink_to(p)
    save_nifti(tmp_path / "in" / "normalised.nii.gz", np.random.default_rng(0).random(SHAPE), make_affine())
    out = infer(run, [tmp_path / "in"], tmp_path / "pred", device="cpu")
    status = {c.case_id: c.status for c in out.cases}
    assert status.pop("normalised") == "failed" and set(status.values()) == {"ok"}
    assert "Hounsfield" in next(c.error or "" for c in out.cases if c.case_id == "normalised")
    with (tmp_path / "pred" / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["case", "predicted", "prob_clear", "prob_block"]
    assert [r["case"] for r in rows] == sorted(split["val"])
    for r in rows:
        p = [float(r["prob_clear"]), float(r["prob_block"])]
        assert sum(p) == pytest.approx(1.0, abs=1e-5) and r["predicted"] == ["clear", "block"][int(np.argmax(p))]
        side = json.loads((tmp_path / "pred" / f"{r['case']}.json").read_text())
        assert side["format"] == "medpipe-classification-sidecar/1" and side["predicted"] == r["predicted"]
        assert side["model"]["sha256"] and side["input_sha256"] and side["versions"]["medpipe"]
        assert side["probabilities"]["block"] == pytest.approx(float(r["prob_block"]), abs=1e-6)
    again = infer(run, [tmp_path / "in"], tmp_path / "pred", device="cpu")  # resume: finished rows are kept
    assert {c.case_id: c.status for c in again.cases if c.case_id != "normalised"} == dict.fromkeys(status, "skipped")
    assert len((tmp_path / "pred" / "predictions.csv").read_text().splitlines()) == len(rows) + 1


@pytest.mark.slow
def test_pipeline_scores_held_out_cases_with_a_known_answer(tmp_path: Path, blocks: Path) -> None:
    """``medpipe run`` with the sample-cls config on the block cases: the AUC of the held-out 30 % must be high
    (the block is there or not; an untrained model scores about 0.5); labels and report come from the run."""
    from medpipe.pipeline import run_pipeline

    raw = yaml.safe_load((REPO / "pipelines" / "sample-cls.yaml").read_text())
    raw["labels"], raw["classes"] = {0: "background", 1: "body", 2: "block"}, ["clear", "block"]
    raw["data"] = {**raw["data"], "root": str(blocks), "class_from_label": {"label": 2, "min_voxels": 5}}
    raw["transforms"] = {**raw["transforms"], "spacing_mm": [1.5, 1.5, 3.0], "patch_size_vox": [16, 16, 8]}
    raw["model"]["width_factor"] = 0.125
    raw["training"] = {**raw["training"], "epochs": 4, "iterations_per_epoch": 5, "batch_size": 4, "val_every": 2,
                       "lr": 0.01, "num_workers": 0}
    result = run_pipeline(config_from_dict(raw), tmp_path / "job", device="cpu")
    summary = json.loads((tmp_path / "job" / "report" / "summary.json").read_text())
    truth = (tmp_path / "job" / "references" / "labels.csv").read_text().splitlines()
    val = json.loads((tmp_path / "job" / "model" / "split.json").read_text())["val"]
    assert truth[0] == "case,label" and len(truth) - 1 == len(result.infer.cases) == len(val) == 5
    assert result.infer.n_failed == 0 and (tmp_path / "job" / "report" / "report.html").is_file()
    assert summary["n_cases"] == 5 and summary["metrics"]["auc"] >= 0.9, summary["metrics"]
