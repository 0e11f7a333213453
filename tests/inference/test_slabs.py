"""Long scans split into slabs along the slice axis (medpipe.inference.slabs): the split result equals the whole-scan
result on anisotropic, flipped (negative steps), oblique and sagittal inputs, with whole-volume z-score statistics
and foreground crop, under mirror TTA, and the mask lands on the source grid.

Why exact: the slabs are cut on the network grid along MONAI's own window starts, so each core voxel gets the same
windows, Gaussian weights and summation order as in the whole scan, and each slab is resampled bit-identically to
the whole scan's grid; what remains is float rounding in the network (the same windows run in other batches) and
in the z-score statistics (summed in float64): scores agree within 1e-5 (measured ~3e-7), far below the score
margins of these cases, so the masks are equal voxel for voxel."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medpipe.config import config_from_dict
from medpipe.errors import ConfigError
from medpipe.inference.batch import infer
from medpipe.inference.inputs import LoadedCase, collect_inputs, load_case
from medpipe.inference.predictor import Prediction, Predictor
from medpipe.inference.sidecar import InferenceSidecar
from medpipe.inference.slabs import NetworkGrid, plan_slabs, window_starts
from medpipe.io.geometry import Grid, check_on_grid, grid_of
from tests.conftest import make_affine, save_nifti, sphere_phantom
from tests.inference_models import save_fold_folders, tiny_cfg

#: Small enough that the 40 x 36 x 90 test scans split into several slabs.
BUDGET = 40_000
SCORE_TOL = 1e-5

GEOMETRIES = {
    "anisotropic": ((40, 36, 90), make_affine((0, 1, 2), (1, 1, 1), (0.9, 1.1, 2.0))),
    "flipped": ((40, 36, 90), make_affine((0, 1, 2), (-1, -1, -1), (0.9, 1.1, 2.0), origin=(10.0, 20.0, 30.0))),
    "oblique": ((40, 36, 90), make_affine((0, 1, 2), (1, -1, 1), (0.9, 1.1, 2.0), (8, -5, 12), (12.0, -40.0, 30.0))),
    # slices along R-L: the source's third axis runs along x, so the split is along the network's axis 0
    "sagittal": ((36, 40, 160), make_affine((1, 2, 0), (1, -1, 1), (1.1, 2.0, 0.9))),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("slab_runs")
    return {"ct": save_fold_folders(root / "ct", 1) / "fold_0",
            "mr": save_fold_folders(root / "mr", 1, tiny_cfg(transforms={"intensity": "zscore_nonzero",
                                                                         "crop_foreground": True})) / "fold_0"}


def scan(tmp_path: Path, name: str, mr: bool = False) -> tuple[Path, np.ndarray]:
    """A CT-like phantom; ``mr``: zero outside the body (skull-stripped MR-like), so that the non-zero z-score and
    the foreground crop have something to do."""
    shape, affine = GEOMETRIES[name]
    image, _ = sphere_phantom(shape, affine, radii_mm=(30.0, 12.0))
    if mr:
        image = np.where(image < -500, 0.0, image + 100.0)
    return save_nifti(tmp_path / f"{name}.nii.gz", image, affine, np.int16), affine


def read(path: Path, seg: Predictor) -> LoadedCase:
    return load_case(collect_inputs([path], seg.cfg.channels)[0], seg.cfg.in_channels)


def whole_and_split(seg: Predictor, case: LoadedCase) -> tuple[Prediction, Prediction]:
    seg.cfg = seg.cfg.with_overrides(inference={"max_slab_voxels": 0})
    whole = seg.predict(case)
    seg.cfg = seg.cfg.with_overrides(inference={"max_slab_voxels": BUDGET})
    return whole, seg.predict(case)


def assert_same(whole: Prediction, split: Prediction) -> None:
    assert split.details.split is not None and split.details.split.n_slabs >= 2
    assert whole.details.split is None
    assert tuple(split.scores.shape) == tuple(whole.scores.shape)
    assert torch.allclose(split.scores.affine, whole.scores.affine, atol=1e-6)
    diff = (split.scores.as_tensor() - whole.scores.as_tensor()).abs().max()
    assert float(diff) < SCORE_TOL
    assert np.array_equal(split.labels, whole.labels)
    assert (whole.labels > 0).sum() > 1000  # a real mask, not two empty ones


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_split_equals_whole(tmp_path: Path, runs: dict[str, Path], name: str) -> None:
    path, _ = scan(tmp_path, name)
    seg = Predictor(runs["ct"], "cpu")
    whole, split = whole_and_split(seg, read(path, seg))
    assert_same(whole, split)
    assert split.details.split is not None
    assert split.details.split.network_axis == (0 if name == "sagittal" else 2)


def test_split_uses_whole_volume_zscore_and_crop(tmp_path: Path, runs: dict[str, Path]) -> None:
    """z-score statistics and the foreground box come from a streaming pass over the whole volume, so slabs
    normalise and crop exactly as the whole scan does (per-slab statistics would shift every slab differently)."""
    path, _ = scan(tmp_path, "flipped", mr=True)
    seg = Predictor(runs["mr"], "cpu")
    case = read(path, seg)
    whole, split = whole_and_split(seg, case)
    assert_same(whole, split)
    assert split.scores.shape[-1] < 72  # the crop removed air slices along z (72 uncropped)


@pytest.mark.slow
def test_split_under_mirror_tta_along_the_split_axis(tmp_path: Path, runs: dict[str, Path]) -> None:
    """A pass flipped along the split axis runs on the slab part that holds the mirrored grid's windows."""
    path, _ = scan(tmp_path, "oblique")
    seg = Predictor(runs["ct"], "cpu", tta="flip")
    assert any(2 in p for p in seg.passes)
    whole, split = whole_and_split(seg, read(path, seg))
    assert_same(whole, split)
    assert split.entropy_sum is not None and whole.entropy_sum is not None
    assert float((split.entropy_sum - whole.entropy_sum).abs().max()) < SCORE_TOL * 10


def test_infer_split_lands_on_source_grid(tmp_path: Path) -> None:
    """End to end (pipelined loop, integer voxels kept): the split case's mask is on the source grid, equals the
    whole-scan mask, and the sidecar records the split and the peak memory."""
    path, affine = scan(tmp_path, "flipped")
    split_run = save_fold_folders(tmp_path / "split", 1, tiny_cfg(inference={"max_slab_voxels": BUDGET}))
    whole_run = save_fold_folders(tmp_path / "whole", 1, tiny_cfg(inference={"max_slab_voxels": 0}))
    masks = {}
    for name, run in (("split", split_run), ("whole", whole_run)):
        res = infer(run / "fold_0", [path], tmp_path / name, device="cpu")
        assert [c.status for c in res.cases] == ["ok"], res.cases
        mask = tmp_path / name / "flipped.nii.gz"
        check_on_grid(mask, grid_of(nib.load(str(path))))
        back = nib.load(str(mask))
        assert back.shape == GEOMETRIES["flipped"][0] and np.allclose(back.affine, affine, atol=1e-4)
        masks[name] = np.asarray(back.dataobj)
        side = json.loads((tmp_path / name / "flipped.json").read_text())
        assert side["memory"]["host_rss_peak_mb"] > 0
        record = InferenceSidecar.from_json(side)
        assert record.to_json() == side  # the split survives the round trip
        if name == "split":
            assert side["split"]["n_slabs"] >= 2 and side["split"]["network_axis"] == 2
            assert side["split"]["margin_vox"] > 0 and side["split"]["max_slab_voxels"] == BUDGET
            assert record.details.split is not None and record.details.split.n_slabs == side["split"]["n_slabs"]
        else:
            assert side["split"] is None and record.details.split is None
    assert np.array_equal(masks["split"], masks["whole"])


@pytest.mark.parametrize(("length", "roi", "overlap"), [(72, 16, 0.25), (73, 16, 0.5), (100, 32, 0.5),
                                                        (41, 8, 0.6), (64, 16, 0.5)])
def test_slabs_hold_every_window_of_their_core(length: int, roi: int, overlap: float) -> None:
    """Known answer on the window arithmetic: MONAI, sliding over a slab's plain (or mirrored) part, places
    exactly the whole grid's (or the mirrored grid's) windows there; cores tile the axis; each slab reads only
    part of the source."""
    cfg = tiny_cfg(inference={"roi_size_vox": [8, 8, roi], "overlap": overlap})
    affine = make_affine(spacing=(1.5, 1.5, 2.5))
    source = Grid((8, 8, length), affine)
    grid = NetworkGrid((8, 8, length), affine)
    whole = window_starts(length, roi, overlap)
    flipped = sorted(length - roi - p for p in whole)
    slabs = plan_slabs(cfg, source, grid, 2, 8 * 8 * 3 * roi, mirror=True)
    assert len(slabs) >= 2
    assert slabs[0].core_lo == 0 and slabs[-1].core_hi == length
    assert all(a.core_hi == b.core_lo for a, b in itertools.pairwise(slabs))
    for s in slabs:
        for (lo, hi), starts, mirrored in ((s.plain, whole, False), (s.mirrored, flipped, True)):
            # MONAI slides over the pass's (flipped) part of the slab: back in unflipped voxels
            local = window_starts(hi - lo, roi, overlap)
            here = sorted(hi - roi - p if mirrored else lo + p for p in local)
            assert here == [p for p in starts if lo <= p and p + roi <= hi]
            covering = [p for p in starts if p + roi > s.core_lo and p < s.core_hi]
            assert set(covering) <= set(here)
        assert s.lo <= min(s.plain[0], s.mirrored[0]) and s.hi >= max(s.plain[1], s.mirrored[1])
        assert 0 <= s.src_lo and s.src_hi <= length and s.src_hi - s.src_lo < length


def test_small_scans_are_not_split_and_setting_is_checked(tmp_path: Path, runs: dict[str, Path]) -> None:
    path, _ = scan(tmp_path, "anisotropic")
    seg = Predictor(runs["ct"], "cpu")
    assert seg.cfg.inference.max_slab_voxels == 128 * 1024 * 1024
    assert seg.predict(read(path, seg)).details.split is None
    with pytest.raises(ConfigError, match="max_slab_voxels"):
        config_from_dict({"inference": {"max_slab_voxels": -1}})


def test_integer_voxels_kept_exactly(tmp_path: Path) -> None:
    path, _ = scan(tmp_path, "anisotropic")
    case = collect_inputs([path], ("CT",))[0]
    kept = load_case(case, 1, keep_integers=True)
    plain = load_case(case, 1)
    assert kept.array.dtype == np.int16 and plain.array.dtype == np.float32
    assert np.array_equal(kept.array.astype(np.float32), plain.array)
    scaled = nib.Nifti1Image(np.asarray(nib.load(str(path)).dataobj), GEOMETRIES["anisotropic"][1])
    scaled.header.set_slope_inter(0.5, -10.0)
    nib.save(scaled, str(tmp_path / "scaled.nii.gz"))
    got = load_case(collect_inputs([tmp_path / "scaled.nii.gz"], ("CT",))[0], 1, keep_integers=True)
    assert got.array.dtype == np.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_split_on_cuda_matches_whole(tmp_path: Path, runs: dict[str, Path]) -> None:
    """fp16 stitching on the device: the slabs' cores are stitched into the same scores as the whole scan."""
    path, _ = scan(tmp_path, "oblique")
    seg = Predictor(runs["ct"], "cuda")
    whole, split = whole_and_split(seg, read(path, seg))
    assert split.details.split is not None and split.details.memory_rung == "device"
    assert (split.labels != whole.labels).mean() < 1e-3
