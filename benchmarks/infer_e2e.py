"""End-to-end inference: `medpipe infer` vs a plain MONAI-tutorial pipeline, same weights, same patch/overlap.

Baseline (as in MONAI's tutorials): LoadImaged -> EnsureChannelFirstd -> Orientationd -> Spacingd ->
ScaleIntensityRanged -> CropForegroundd -> sliding_window_inference -> Invertd -> AsDiscreted(argmax) ->
SaveImaged. medpipe: the `medpipe infer` library call (validated read, same preprocessing, one direct
resampling of probabilities onto the source grid, geometry contract, atomic write, sidecar).

The test volume is a sample CT case resampled to >= 256x256x128 (0.35 x 0.35 x 0.78 mm) so that export
and resampling costs are realistic. Prints a table: seconds per stage, the ratio, and the Dice agreement of the
two masks per label.

    python benchmarks/infer_e2e.py --run runs/sample-ct/model [--device cpu|cuda] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]


def make_volume(out: Path, shape: tuple[int, int, int] = (256, 256, 128)) -> Path:
    """Upsample sample case_00001 (LPS, 112x112xK) to ``shape`` with matching affine (trilinear for HU)."""
    src = nib.load(str(REPO / "sample_data" / "kits" / "case_00001" / "imaging.nii.gz"))
    data = np.asarray(src.dataobj, dtype=np.float32)
    zoom = np.asarray(shape) / np.asarray(data.shape)
    big = ndimage.zoom(data, zoom, order=1).astype(np.int16)
    aff = src.affine.copy()
    aff[:3, :3] = src.affine[:3, :3] / zoom
    # keep the world extent: shift the origin by half a source voxel minus half a new voxel
    aff[:3, 3] = src.affine[:3, 3] + src.affine[:3, :3] @ (0.5 / zoom - 0.5)
    img = nib.Nifti1Image(big, aff)
    img.set_qform(aff, 1)
    img.set_sform(aff, 1)
    nib.save(img, str(out))
    return out


def monai_baseline(ckpt: Path, image: Path, out_dir: Path, device: str) -> tuple[Path, dict[str, float]]:
    from monai import transforms as mt
    from monai.data import decollate_batch, list_data_collate
    from monai.inferers import sliding_window_inference

    from medpipe.models.checkpoint import model_from_checkpoint

    model, cfg = model_from_checkpoint(ckpt, device)
    t, inf = cfg.transforms, cfg.inference
    t0 = time.perf_counter()
    pre = mt.Compose([
        mt.LoadImaged(keys="image"),
        mt.EnsureChannelFirstd(keys="image"),
        mt.Orientationd(keys="image", axcodes="RAS"),
        mt.Spacingd(keys="image", pixdim=t.spacing_mm, mode="bilinear"),
        mt.ScaleIntensityRanged(keys="image", a_min=t.hu_window[0], a_max=t.hu_window[1], b_min=0.0, b_max=1.0,
                                clip=True),
        mt.CropForegroundd(keys="image", source_key="image", margin=2, allow_smaller=True),
    ])
    post = mt.Compose([
        mt.Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
        mt.AsDiscreted(keys="pred", argmax=True),
        mt.SaveImaged(keys="pred", output_dir=str(out_dir), output_postfix="seg", resample=False,
                      separate_folder=False, output_dtype=np.uint8, print_log=False),
    ])
    batch = list_data_collate([pre({"image": str(image)})])
    t1 = time.perf_counter()
    use_amp = inf.amp and device.startswith("cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
        batch["pred"] = sliding_window_inference(batch["image"].to(device), inf.roi_size_vox, inf.sw_batch_size,
                                                 model, overlap=inf.overlap, mode=inf.blend)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    for item in decollate_batch(batch):
        item["pred"] = torch.softmax(item["pred"].float(), 0)
        post(item)
    t3 = time.perf_counter()
    stem = image.name.replace(".nii.gz", "")
    return out_dir / f"{stem}_seg.nii.gz", {"preprocess": t1 - t0, "inference": t2 - t1, "export": t3 - t2,
                                             "total": t3 - t0}


def medpipe_run(run: Path, image: Path, out_dir: Path, device: str) -> tuple[Path, dict[str, float]]:
    import json

    from medpipe.inference.batch import infer

    t0 = time.perf_counter()
    res = infer(run, [image], out_dir, device=device, overwrite=True)
    total = time.perf_counter() - t0
    case = res.cases[0]
    if case.status != "ok" or case.mask is None:
        raise SystemExit(f"medpipe failed: {case.error}")
    timings = json.loads((out_dir / f"{case.case_id}.json").read_text())["timings_s"]
    load = total - sum(timings.values())
    return case.mask, {"load+load model": load, **timings, "total": total}


def dice(a: np.ndarray, b: np.ndarray, k: int) -> float:
    x, y = a == k, b == k
    s = x.sum() + y.sum()
    return float(2 * (x & y).sum() / s) if s else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "sample-ct" / "model")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each; the fastest is reported")
    args = ap.parse_args()
    from medpipe.inference.predictor import find_checkpoint

    ckpt = find_checkpoint(args.run)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        image = make_volume(tmp / "ct_big.nii.gz")
        shape = nib.load(str(image)).shape
        best: dict[str, dict[str, float]] = {}
        masks: dict[str, Path] = {}
        for _ in range(args.repeats):
            for name, fn in (("monai", monai_baseline), ("medpipe", medpipe_run)):
                runner = fn if name == "medpipe" else monai_baseline
                arg = args.run if name == "medpipe" else ckpt
                mask, times = runner(arg, image, tmp / name, args.device)
                masks[name] = mask
                if name not in best or times["total"] < best[name]["total"]:
                    best[name] = times
        a = np.asarray(nib.load(str(masks["medpipe"])).dataobj)
        b = np.asarray(nib.load(str(masks["monai"])).dataobj)
        mimg, bimg = nib.load(str(masks["medpipe"])), nib.load(str(masks["monai"]))
        src = nib.load(str(image))
    print(f"volume {shape}, device {args.device}, torch {torch.__version__}, best of {args.repeats}")
    print(f"{'stage':<18}{'MONAI tutorial (s)':>20}{'medpipe (s)':>14}")
    for stage in ("preprocess", "inference", "export", "total"):
        m, p = best["monai"].get(stage, float("nan")), best["medpipe"].get(stage, float("nan"))
        print(f"{stage:<18}{m:>20.2f}{p:>14.2f}")
    print(f"{'(load, checks)':<18}{'':>20}{best['medpipe']['load+load model']:>14.2f}")
    print(f"ratio MONAI / medpipe (total): {best['monai']['total'] / best['medpipe']['total']:.2f}x")
    print("mask agreement (Dice, medpipe vs MONAI): "
          + ", ".join(f"label {k}: {dice(a, b, k):.4f}" for k in (1, 2)))
    print(f"on source grid: medpipe {np.allclose(mimg.affine, src.affine, atol=1e-4) and mimg.shape == src.shape}, "
          f"MONAI {np.allclose(bimg.affine, src.affine, atol=1e-4) and bimg.shape == src.shape}; "
          f"dtypes medpipe {mimg.get_data_dtype()}, MONAI {bimg.get_data_dtype()}")


if __name__ == "__main__":
    main()
