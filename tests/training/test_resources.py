"""Training fits the machine (issue 15): loader workers vs free cores, the in-memory cache vs RAM."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from medpipe.config import config_from_dict, load_config
from medpipe.datasets.layouts import load_dataset
from medpipe.training.resources import cache_bytes, cores_per_process, fit_cache, loader_workers
from tests.conftest import REPO


def test_auto_workers_leave_a_core_and_explicit_numbers_are_capped_with_a_notice() -> None:
    free = cores_per_process() - 1
    assert loader_workers("auto") == (min(8, free), None)
    n, note = loader_workers(free + 7)
    assert n == free and note is not None and f"num_workers {free + 7} capped to {free}" in note
    assert loader_workers(0) == (0, None)
    assert load_config(REPO / "pipelines" / "sample-ct.yaml").training.num_workers == "auto"
    assert config_from_dict({"training": {"num_workers": "auto"}}).training.num_workers == "auto"


def _three_sample_cases(tmp_path: Path) -> tuple[Any, list[Any]]:
    """The sample-ct config pointed at a copy of three sample KiTS cases, and those cases."""
    root = tmp_path / "kits"
    for case in sorted((REPO / "sample_data" / "kits").iterdir())[:3]:
        shutil.copytree(case, root / case.name)
    raw = yaml.safe_load((REPO / "pipelines" / "sample-ct.yaml").read_text())
    cfg = config_from_dict({**raw, "data": {**raw["data"], "root": str(root)}})
    cases = list(load_dataset(root, "auto").cases)
    return cfg, cases


def test_a_cache_that_would_not_fit_in_ram_goes_to_disk_with_a_notice(tmp_path: Path) -> None:
    cfg, cases = _three_sample_cases(tmp_path)
    need = cache_bytes(cfg, cases)
    # 3 cases of ~56 x 56 x 38 voxels at 1.6 x 1.6 x 2.5 mm, image + label in float32
    assert 3 * 56 * 56 * 36 * 8 * 0.8 < need < 3 * 56 * 56 * 40 * 8 * 1.25
    same, note = fit_cache(cfg, cases, tmp_path / "run", ram=100 * need)
    assert same is cfg and note is None
    fitted, note = fit_cache(cfg, cases, tmp_path / "run", ram=need)
    assert fitted.training.cache_dir == str(tmp_path / "run" / "preprocessed")
    assert note is not None and "would not fit" in note and "on disk" in note


def test_a_cache_that_fits_neither_ram_nor_disk_is_turned_off_with_a_notice(tmp_path: Path) -> None:
    cfg, cases = _three_sample_cases(tmp_path)
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and a tmpfs mount to make a disk too small for the cache")
    try:
        fitted, note = fit_cache(cfg, cases, small / "run", ram=cache_bytes(cfg, cases))
    finally:
        subprocess.run(["umount", str(small)], check=False)
    assert fitted.training.cache is False and not fitted.training.cache_dir
    assert note is not None and "would not fit" in note and "no cache" in note
