"""Automatic configuration: known answers on hand-made fingerprints, and a plan that trains as written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medpipe.cli import app
from medpipe.config import load_config
from medpipe.datasets.fingerprint import FINGERPRINT_FORMAT, Fingerprint
from medpipe.datasets.plan import estimate_vram_gb, plan_from_fingerprint, topology
from medpipe.errors import DatasetError
from medpipe.models.factory import build_model
from tests.datasets.test_layouts import make_layout

runner = CliRunner()


def fingerprint(spacing: list[float], shape: list[int], *, p10: list[float] | None = None, n: int = 100,
                modality: str = "CT", channels: tuple[str, ...] = ("CT",)) -> Fingerprint:
    def cls(name: str, voxels: int) -> dict:
        return {"name": name, "voxels": voxels, "fraction": 0.0, "cases_present": int(voxels > 0)}

    return Fingerprint.from_json({
        "format": FINGERPRINT_FORMAT,
        "dataset": {"root": "/data/x", "layout": "kits", "n_cases": n, "n_checked": n, "channels": list(channels),
                    "labels": {"0": "background", "1": "kidney", "2": "tumor", "3": "cyst"}, "regions": {}},
        "identity": "0123456789abcdef", "modality": modality,
        "spacing_mm": {"median": spacing, "p10": p10 or spacing, "min": spacing, "max": spacing},
        "shape_vox": {"median": shape, "p10": shape, "min": shape, "max": shape},
        "intensity_foreground": {channels[0]: {"p0_5": -79.0, "p99_5": 304.0}},
        "classes": {"1": cls("kidney", 10), "2": cls("tumor", 5), "3": cls("cyst", 0)},
        "n_errors": 0, "n_warnings": 0,
        "cases": [{"case_id": f"c{i}", "shape_ras": shape, "spacing_ras_mm": spacing, "orientation": "RAS",
                   "label_voxels": {}} for i in range(n)],
    })


def test_ct_plan_known_answers() -> None:
    plan = plan_from_fingerprint(fingerprint([0.8, 0.8, 1.0], [512, 512, 300]), gpu_mem_gb=8)
    cfg = plan.config
    assert cfg.transforms.spacing_mm == (0.8, 0.8, 1.0)
    assert cfg.transforms.intensity == "ct_window" and cfg.transforms.hu_window == (-79.0, 304.0)
    assert cfg.labels == {0: "background", 1: "kidney", 2: "tumor"}  # cyst never occurs: left out
    assert cfg.model.arch == "dynunet" and cfg.model.deep_supervision
    assert plan.estimated_vram_gb <= 8.0
    _, _, strides = topology(list(cfg.transforms.patch_size_vox), list(cfg.transforms.spacing_mm))
    for axis in range(3):
        total = 1
        for s in strides:
            total *= s[axis]
        assert cfg.transforms.patch_size_vox[axis] % total == 0
    assert cfg.data.fingerprint == "0123456789abcdef" and cfg.data.fold == 0


def test_anisotropic_axis_uses_the_10th_percentile_and_is_not_pooled_first() -> None:
    plan = plan_from_fingerprint(fingerprint([0.7, 0.7, 5.0], [512, 512, 60], p10=[0.7, 0.7, 2.5]), gpu_mem_gb=8)
    assert plan.config.transforms.spacing_mm == (0.7, 0.7, 2.5)
    _, kernels, strides = topology(list(plan.config.transforms.patch_size_vox), [0.7, 0.7, 2.5])
    assert strides[1] == [2, 2, 1] and kernels[0] == [3, 3, 1]


def test_bigger_gpu_gives_bigger_patches_and_memory_estimate_grows() -> None:
    fp = fingerprint([1.0, 1.0, 1.0], [240, 240, 155], modality="MR", channels=("t1", "t1ce", "t2", "flair"))
    small, big = plan_from_fingerprint(fp, gpu_mem_gb=8), plan_from_fingerprint(fp, gpu_mem_gb=40)
    vox = [int(torch.tensor(p.config.transforms.patch_size_vox).prod()) for p in (small, big)]
    assert vox[1] > vox[0] and small.config.transforms.intensity == "zscore_nonzero"
    _, _, s = topology([128, 128, 128], [1.0, 1.0, 1.0])
    one, two = (estimate_vram_gb([128, 128, 128], b, s, [32, 64, 128, 256, 320, 320], 1, 3) for b in (1, 2))
    assert 1.0 < one < two < 2 * one + 1e-9


def test_small_images_give_a_whole_image_patch_and_bigger_batches() -> None:
    plan = plan_from_fingerprint(fingerprint([1.0, 1.0, 1.0], [64, 64, 48], n=1000), gpu_mem_gb=24)
    cfg = plan.config
    assert cfg.transforms.patch_size_vox == (64, 64, 48)
    assert cfg.training.batch_size * cfg.transforms.samples_per_case > 2


def test_plan_needs_cases() -> None:
    fp = dataclasses.replace(fingerprint([1.0, 1.0, 1.0], [64, 64, 48]), cases=())
    with pytest.raises(DatasetError, match="no readable cases"):
        plan_from_fingerprint(fp)


def test_cli_plan_writes_an_editable_config_that_builds(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "b", "brats2023", n=3)
    out = tmp_path / "plan.yaml"
    res = runner.invoke(app, ["plan", str(root), "-o", str(out), "--gpu-mem-gb", "4"])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert text.startswith("# medpipe plan") and "target spacing" in text
    assert (tmp_path / "plan.fingerprint.json").is_file()
    cfg = load_config(out)
    assert cfg.channels == ("t1n", "t1c", "t2w", "t2f") and cfg.modality == "MR"
    assert Path(cfg.data.root) == root.resolve() and cfg.data.format == "brats2023"
    model = build_model(cfg).eval()
    with torch.no_grad():
        y = model(torch.zeros(1, 4, *cfg.transforms.patch_size_vox))
    assert y.shape == (1, 4, *cfg.transforms.patch_size_vox)


def test_cli_plan_refuses_a_dataset_with_errors(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "b", "brats2023", n=3)
    (root / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1c.nii.gz").unlink()
    res = runner.invoke(app, ["plan", str(root), "-o", str(tmp_path / "plan.yaml")])
    assert res.exit_code == 1 and "BraTS-GLI-00001-000" in res.output and not (tmp_path / "plan.yaml").exists()


@pytest.mark.parametrize("name", ["brats.yaml", "kits.yaml", "msd.yaml"])
def test_shipped_configs_load_build_and_fit_a_24gb_gpu(name: str) -> None:
    from tests.conftest import REPO

    cfg = load_config(REPO / "pipelines" / name)
    assert cfg.model.arch == "dynunet" and cfg.data.root == "" and cfg.data.n_folds == 5
    if cfg.regions:
        cfg.region_order()  # decodable
    patch = list(cfg.transforms.patch_size_vox)
    depth, _, strides = topology(patch, list(cfg.transforms.spacing_mm))
    assert depth == len(cfg.model.channels)
    for axis in range(3):
        assert patch[axis] % int(torch.tensor([s[axis] for s in strides]).prod()) == 0
    patches = cfg.training.batch_size * cfg.transforms.samples_per_case
    assert estimate_vram_gb(patch, patches, strides, list(cfg.model.channels), cfg.in_channels,
                            cfg.out_channels) < 24
    assert sum(p.numel() for p in build_model(cfg).parameters()) > 1_000_000
