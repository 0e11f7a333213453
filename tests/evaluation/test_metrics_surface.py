"""Known-answer tests for surface distances (both conventions) and agreement with MONAI and surface-distance."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial.distance import cdist

from medpipe.evaluation.metrics.surface import bounding_box, nearest_distances, surface_distances, voxel_surface


def _voxels(shape: tuple[int, int, int], *points: tuple[int, int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for p in points:
        m[p] = True
    return m


@pytest.mark.parametrize("convention", ["voxel", "surfel"])
def test_single_voxels_three_apart_at_2mm_are_6mm(convention: str) -> None:
    ref, pred = _voxels((8, 5, 5), (1, 2, 2)), _voxels((8, 5, 5), (4, 2, 2))
    sd = surface_distances(ref, pred, (2.0, 0.7, 3.0), convention)
    assert sd.hd() == pytest.approx(6.0)
    assert sd.hd_percentile(95) == pytest.approx(6.0)
    # voxel centres: every distance is 6 mm; voxel corners: half of each cube's corners are 4 mm away
    assert sd.assd() == pytest.approx(6.0 if convention == "voxel" else 5.0)
    assert sd.nsd(4.0) == pytest.approx(0.0 if convention == "voxel" else 0.5)
    assert sd.nsd(6.0) == pytest.approx(1.0)


def test_single_voxels_diagonal_on_anisotropic_grid() -> None:
    ref, pred = _voxels((4, 5, 6), (0, 0, 0)), _voxels((4, 5, 6), (1, 2, 3))
    sd = surface_distances(ref, pred, (0.5, 1.0, 2.0), "voxel")
    assert sd.hd() == pytest.approx(np.sqrt(0.5**2 + 2.0**2 + 6.0**2))
    assert sd.hd_percentile(95) == pytest.approx(np.sqrt(40.25))


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius_vox: float) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius_vox**2  # type: ignore[return-value]


@pytest.mark.parametrize("convention", ["voxel", "surfel"])
def test_sphere_shifted_by_three_voxels(convention: str) -> None:
    sphere = _ball((40, 40, 40), (18, 20, 20), 12)
    shifted = np.roll(sphere, 3, axis=0)
    sd = surface_distances(sphere, shifted, (1.5, 1.5, 1.5), convention)
    assert sd.hd() == pytest.approx(4.5)  # the poles along the shift: 3 voxels x 1.5 mm
    assert sd.hd_percentile(95) <= 4.5
    # continuous spheres: distance ~ s*|cos(theta)|, mean s/2 = 2.25 mm; on the voxel staircase some surface
    # patches of the two copies coincide, which lowers the mean a little
    assert 0.35 * 4.5 < sd.assd() < 0.55 * 4.5
    assert sd.nsd(4.5) == pytest.approx(1.0)
    assert sd.nsd(0.1) < 0.3


def test_identical_masks_have_zero_distance() -> None:
    m = _ball((20, 20, 20), (10, 9, 10), 5)
    sd = surface_distances(m, m.copy(), (0.8, 0.8, 2.5))
    assert (sd.hd(), sd.hd_percentile(95), sd.assd(), sd.nsd(0.0)) == (0.0, 0.0, 0.0, 1.0)


def test_empty_mask_is_refused() -> None:
    with pytest.raises(ValueError):
        surface_distances(np.zeros((4, 4, 4), bool), _voxels((4, 4, 4), (1, 1, 1)), (1.0, 1.0, 1.0))


def test_nearest_distances_match_brute_force_including_far_points() -> None:
    rng = np.random.default_rng(3)
    src = rng.random((30, 25, 20)) < 0.02
    dst = np.zeros_like(src)
    dst[2:5, 3:6, 1:3] = True
    dst[28, 24, 19] = True  # a far point: exercises the KD-tree fallback
    spacing = (0.7, 1.3, 2.9)
    got = nearest_distances(src, dst, spacing)
    sp = np.asarray(spacing)
    want = cdist(np.argwhere(src) * sp, np.argwhere(dst) * sp).min(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.isinf(nearest_distances(src, np.zeros_like(dst), spacing)).all()


def test_voxel_surface_is_erosion_xor_mask() -> None:
    m = ndi.gaussian_filter(np.random.default_rng(0).standard_normal((20, 18, 16)), 2) > 0
    assert np.array_equal(voxel_surface(m), m ^ ndi.binary_erosion(m))


def test_bounding_box() -> None:
    a, b = _voxels((10, 10, 10), (2, 3, 4)), _voxels((10, 10, 10), (7, 1, 5))
    assert bounding_box(a, b) == (slice(2, 8), slice(1, 4), slice(4, 6))
    assert bounding_box(np.zeros((3, 3, 3), bool)) is None


def _blobs(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(18, 36, 3))
    a = ndi.gaussian_filter(rng.standard_normal(shape), 2.5) > 0.05
    b = ndi.gaussian_filter(rng.standard_normal(shape), 2.5) > 0.05
    spacing = tuple(float(s) for s in rng.uniform(0.4, 3.0, 3))
    return a, b, spacing  # type: ignore[return-value]


@pytest.mark.parametrize("seed", range(4))
def test_voxel_convention_agrees_with_monai(seed: int) -> None:
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    ref, pred, spacing = _blobs(seed)
    y, yp = torch.from_numpy(ref)[None, None].float(), torch.from_numpy(pred)[None, None].float()
    sd = surface_distances(ref, pred, spacing, "voxel")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {"include_background": True, "spacing": spacing}
        assert sd.hd() == pytest.approx(compute_hausdorff_distance(yp, y, **kw).item(), rel=1e-5)
        assert sd.hd_percentile(95) == pytest.approx(compute_hausdorff_distance(yp, y, percentile=95, **kw).item(),
                                                     rel=1e-5)
        assert sd.assd() == pytest.approx(compute_average_surface_distance(yp, y, symmetric=True, **kw).item(),
                                          rel=1e-5)
        assert sd.nsd(2.0) == pytest.approx(compute_surface_dice(yp, y, [2.0], **kw).item(), abs=1e-6)
        subvoxel = compute_surface_dice(yp, y, [2.0], use_subvoxels=True, **kw).item()
    assert surface_distances(ref, pred, spacing, "surfel").nsd(2.0) == pytest.approx(subvoxel, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_surfel_convention_agrees_with_deepmind_surface_distance(seed: int) -> None:
    sdm = pytest.importorskip("surface_distance")
    ref, pred, spacing = _blobs(seed)
    sd = surface_distances(ref, pred, spacing, "surfel")
    theirs = sdm.compute_surface_distances(ref, pred, spacing)
    assert sd.hd_percentile(95) == pytest.approx(sdm.compute_robust_hausdorff(theirs, 95), abs=1e-9)
    assert sd.hd() == pytest.approx(sdm.compute_robust_hausdorff(theirs, 100), abs=1e-9)
    assert sd.nsd(1.5) == pytest.approx(sdm.compute_surface_dice_at_tolerance(theirs, 1.5), abs=1e-9)
    m_ref, m_pred = sdm.compute_average_surface_distance(theirs)
    a_ref, a_pred = theirs["surfel_areas_gt"].sum(), theirs["surfel_areas_pred"].sum()
    assert sd.assd() == pytest.approx((m_ref * a_ref + m_pred * a_pred) / (a_ref + a_pred), rel=1e-8)
