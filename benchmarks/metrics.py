"""Surface-metric speed and agreement: medpipe vs MONAI's metric classes vs google-deepmind surface-distance.

Same binary pairs through each implementation, on full-size CT grids (512×512×300 at 0.8×0.8×1.5 mm by
default). Reports the median wall time of ``--repeats`` runs, the ratio to medpipe, and the largest absolute
difference in values between implementations that share a definition:

- medpipe ``surface="voxel"`` vs MONAI ``HausdorffDistanceMetric(percentile=95)``, ``SurfaceDistanceMetric
  (symmetric=True)``, ``SurfaceDiceMetric`` (voxel-centre surfaces);
- medpipe ``surface="surfel"`` (the default) vs surface-distance ``compute_robust_hausdorff`` and
  ``compute_surface_dice_at_tolerance`` (surfel surfaces), if ``surface-distance`` is installed.

Run: ``python benchmarks/metrics.py [--shape 512 512 300] [--repeats 5] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medpipe.evaluation.metrics.surface import surface_distances

TOL_MM = 2.0


def make_pairs(shape: tuple[int, int, int], seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reference/prediction pairs: a liver-sized ellipsoid predicted closely and roughly, and a small lesion
    with a distant false-positive blob."""
    rng = np.random.default_rng(seed)
    i, j, k = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    ii, jj, kk = np.meshgrid(i, j, k, indexing="ij", sparse=True)
    organ = (ii / 0.47) ** 2 + ((jj - 0.02) / 0.35) ** 2 + (kk / 0.4) ** 2
    coarse = ndi.gaussian_filter(rng.standard_normal((64, 64, 40)), 2)
    noise = ndi.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape, strict=True)], order=1)
    ref = organ <= 1
    close = organ + 0.15 * noise <= 1
    rough = ((ii - 0.012) / 0.46) ** 2 + ((jj - 0.01) / 0.36) ** 2 + (kk / 0.41) ** 2 + 0.8 * noise <= 1
    lesion = ((ii - 0.3) / 0.03) ** 2 + ((jj + 0.2) / 0.03) ** 2 + (kk / 0.05) ** 2 <= 1
    lesion_pred = ((ii - 0.305) / 0.028) ** 2 + ((jj + 0.2) / 0.032) ** 2 + (kk / 0.05) ** 2 <= 1
    lesion_pred |= (ii + 0.6) ** 2 / 0.0004 + (jj - 0.6) ** 2 / 0.0004 + (kk + 0.5) ** 2 / 0.001 <= 1
    return {"organ, close": (ref, close), "organ, rough": (ref, rough), "lesion + far FP": (lesion, lesion_pred)}


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(median seconds, last result) of ``repeats`` calls after one warm-up call."""
    fn()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def medpipe_all(ref: np.ndarray, pred: np.ndarray, sp: tuple[float, float, float], conv: str) -> dict[str, float]:
    sd = surface_distances(ref, pred, sp, conv)
    return {"hd95": sd.hd_percentile(95), "assd": sd.assd(), "nsd": sd.nsd(TOL_MM)}


def monai_runs(ref: np.ndarray, pred: np.ndarray, sp: tuple[float, float, float]) -> dict[str, Callable[[], Any]]:
    import torch
    from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric, SurfaceDistanceMetric

    y = torch.from_numpy(ref)[None, None].float()
    yp = torch.from_numpy(pred)[None, None].float()

    def hd95() -> float:
        return float(HausdorffDistanceMetric(include_background=True, percentile=95)(yp, y, spacing=sp).item())

    def all3() -> dict[str, float]:
        asd = SurfaceDistanceMetric(include_background=True, symmetric=True)(yp, y, spacing=sp).item()
        nsd = SurfaceDiceMetric([TOL_MM], include_background=True)(yp, y, spacing=sp).item()
        return {"hd95": hd95(), "assd": float(asd), "nsd": float(nsd)}

    return {"hd95": hd95, "all": all3}


def deepmind_all(ref: np.ndarray, pred: np.ndarray, sp: tuple[float, float, float]) -> dict[str, float] | None:
    try:
        import surface_distance as sdm
    except ImportError:
        return None
    d = sdm.compute_surface_distances(ref, pred, sp)
    m_r, m_p = sdm.compute_average_surface_distance(d)
    a_r, a_p = d["surfel_areas_gt"].sum(), d["surfel_areas_pred"].sum()
    return {"hd95": float(sdm.compute_robust_hausdorff(d, 95)), "assd": float((m_r * a_r + m_p * a_p) / (a_r + a_p)),
            "nsd": float(sdm.compute_surface_dice_at_tolerance(d, TOL_MM))}


def max_diff(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(a[k] - b[k]) for k in a)


def run(shape: tuple[int, int, int], spacing: tuple[float, float, float], repeats: int) -> list[dict[str, Any]]:
    results = []
    for name, (ref, pred) in make_pairs(shape).items():
        row: dict[str, Any] = {"pair": name, "shape": list(shape), "spacing_mm": list(spacing),
                               "ref_voxels": int(ref.sum()), "pred_voxels": int(pred.sum())}
        t_vox, v_vox = timed(lambda r=ref, p=pred: medpipe_all(r, p, spacing, "voxel"), repeats)
        t_sur, v_sur = timed(lambda r=ref, p=pred: medpipe_all(r, p, spacing, "surfel"), repeats)
        runs = monai_runs(ref, pred, spacing)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_m95, m95 = timed(runs["hd95"], repeats)
            t_mall, mall = timed(runs["all"], max(1, repeats // 2))
        row.update(medpipe_voxel_s=t_vox, medpipe_surfel_s=t_sur, monai_hd95_s=t_m95, monai_all_s=t_mall,
                   ratio_monai_hd95=t_m95 / t_vox, ratio_monai_all=t_mall / t_vox,
                   medpipe_voxel=v_vox, medpipe_surfel=v_sur, monai=mall,
                   maxdiff_monai_hd95=abs(m95 - v_vox["hd95"]), maxdiff_monai_all=max_diff(v_vox, mall))
        t_dm, dm = timed(lambda r=ref, p=pred: deepmind_all(r, p, spacing), max(1, repeats // 2))
        if dm is not None:
            row.update(deepmind_s=t_dm, ratio_deepmind=t_dm / t_sur, deepmind=dm, maxdiff_deepmind=max_diff(v_sur, dm))
        results.append(row)
        print(_line(row), flush=True)
    return results


def _line(r: dict[str, Any]) -> str:
    dm = (f" | {r['deepmind_s']:.2f} s ({r['ratio_deepmind']:.1f}×, Δ {r['maxdiff_deepmind']:.1e})"
          if "deepmind_s" in r else " | –")
    return (f"| {r['pair']} | {r['medpipe_voxel_s']:.3f} | {r['medpipe_surfel_s']:.3f} | {r['monai_hd95_s']:.2f} "
            f"({r['ratio_monai_hd95']:.1f}×, Δ {r['maxdiff_monai_hd95']:.1e}) | {r['monai_all_s']:.2f} "
            f"({r['ratio_monai_all']:.1f}×, Δ {r['maxdiff_monai_all']:.1e}){dm} | "
            f"{r['medpipe_surfel']['hd95']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 1.5))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the raw results here")
    args = parser.parse_args()
    print("| pair | medpipe voxel s | medpipe surfel s | MONAI HD95 s (ratio, max Δ mm) | MONAI HD95+ASSD+NSD s "
          "(ratio, max Δ) | surface-distance s (ratio vs surfel, max Δ) | HD95 mm |")
    print("|---|---|---|---|---|---|---|")
    results = run(tuple(args.shape), tuple(args.spacing), args.repeats)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
