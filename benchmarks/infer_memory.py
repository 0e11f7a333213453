"""Peak host memory of inference on a big CT: `medpipe infer` vs nnU-Net v2's nnUNetPredictor, CPU.

The volume: sample CT case_00001 upsampled (trilinear) to 512 x 512 x 1000 voxels at 0.7 mm (int16, as
scanners write it). The models: a 3-class 3D U-Net of the sample-ct config (MONAI UNet 16-32-64-128, 1 residual
unit) for medpipe, and nnU-Net's PlainConvUNet with the same features per stage (16-32-64-128, 1 conv per stage,
close in parameters), both with random weights (seed 0), the same target spacing (1.6 x 1.6 x 2.5 mm), patch
(48 x 48 x 32), overlap 0.5 and Gaussian blending, no mirroring. Each run is a fresh process; its peak RSS is the
kernel's (``wait4`` ``ru_maxrss``), so imports, reading, preprocessing, the network, export and writing all count.

nnU-Net runs in its own venv (``pip install torch==2.13.0 nnunetv2``; default /work/venv-nnunet) through
``predict_single_npy_array`` (read with its NibabelIO, preprocess, predict, export the mask to a file), all in one
process. It is nnU-Net's documented single-case entry point; ``predict_from_files`` adds worker processes.

medpipe runs twice on the same volume and weights: with its default ``inference.max_slab_voxels`` (the scan is
split into slabs along its slice axis) and with ``max_slab_voxels: 0`` (run whole, as before the split).

    python benchmarks/infer_memory.py [--shape 512 512 1000] [--nnunet-python /work/venv-nnunet/bin/python]
        [--skip-nnunet] [--max-slab-voxels N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATCH_XYZ = (48, 48, 32)
SPACING_XYZ = (1.6, 1.6, 2.5)


def make_volume(out: Path, shape: tuple[int, int, int], spacing_mm: float = 0.7) -> Path:
    """Sample case_00001 upsampled to ``shape`` at ``spacing_mm`` isotropic-in-plane (int16 HU), centred on
    the sample's world extent, slab by slab (so this step stays small too)."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    src = nib.load(str(REPO / "sample_data" / "kits" / "case_00001" / "imaging.nii.gz"))
    data = np.asarray(src.dataobj, dtype=np.float32)
    out_arr = np.empty(shape, dtype=np.int16)
    scale = (np.asarray(data.shape) - 1) / (np.asarray(shape) - 1)
    step = 50
    for k0 in range(0, shape[2], step):
        k1 = min(shape[2], k0 + step)
        grid = np.meshgrid(np.arange(shape[0]) * scale[0], np.arange(shape[1]) * scale[1],
                           np.arange(k0, k1) * scale[2], indexing="ij")
        out_arr[:, :, k0:k1] = ndimage.map_coordinates(data, grid, order=1).astype(np.int16)
    direction = src.affine[:3, :3] / np.linalg.norm(src.affine[:3, :3], axis=0)
    aff = np.eye(4)
    aff[:3, :3] = direction * spacing_mm
    aff[:3, 3] = src.affine[:3, 3]
    img = nib.Nifti1Image(out_arr, aff)
    img.set_qform(aff, 1)
    img.set_sform(aff, 1)
    nib.save(img, str(out))
    return out


def make_medpipe_model(run: Path, max_slab_voxels: int | None = None) -> int:
    import torch

    from medpipe.config import load_config
    from medpipe.models.checkpoint import save_checkpoint
    from medpipe.models.factory import build_model

    cfg = load_config(REPO / "pipelines" / "sample-ct.yaml")
    if max_slab_voxels is not None:
        cfg = cfg.with_overrides(inference={"max_slab_voxels": max_slab_voxels})
    torch.manual_seed(0)
    net = build_model(cfg)
    run.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run / "best.pt", net, cfg)
    return sum(p.numel() for p in net.parameters())


def worker_medpipe(run: Path, image: Path, out: Path) -> dict:
    from medpipe.inference.batch import infer

    t0 = time.perf_counter()
    res = infer(run, [image], out, device="cpu", overwrite=True)
    case = res.cases[0]
    if case.status != "ok":
        raise SystemExit(f"medpipe failed: {case.error}")
    side = json.loads((out / f"{case.case_id}.json").read_text())
    return {"seconds": time.perf_counter() - t0, "network_grid": side["network_grid"]["shape"],
            "split": side.get("split"), "timings_s": side["timings_s"], "memory": side.get("memory")}


def worker_mask(run: Path, image: Path, out: Path) -> dict:
    """The stages of ``infer`` up to the written mask (read, preprocess, network, export, write), without the
    lesion table, QC and sidecar that follow: the peak this part alone needs."""
    from medpipe.inference.export import write_mask
    from medpipe.inference.inputs import collect_inputs, ct_intensity_check, load_case
    from medpipe.inference.memory import host_peak_mb
    from medpipe.inference.predictor import Predictor

    t0 = time.perf_counter()
    seg = Predictor(run, "cpu")
    loaded = load_case(collect_inputs([image], seg.cfg.channels)[0], seg.cfg.in_channels, keep_integers=True)
    ct_intensity_check(loaded)
    t1 = time.perf_counter()
    net = seg.prepare(loaded)
    t2 = time.perf_counter()
    ens = seg.run_network(net)
    t3 = time.perf_counter()
    pred = seg.finish(loaded, net, ens)
    out.mkdir(parents=True, exist_ok=True)
    write_mask(out / "case.nii.gz", pred.labels, loaded.grid)
    t4 = time.perf_counter()
    split = pred.details.split
    return {"seconds": t4 - t0, "read_s": t1 - t0, "prepare_s": t2 - t1, "network_s": t3 - t2, "export_s": t4 - t3,
            "peak_mb": host_peak_mb(), "split": split.to_json() if split else None,
            "network_grid": list(pred.details.network_shape)}


def worker_nnunet(image: Path, out: Path) -> dict:  # runs in the nnU-Net venv: no medpipe, no MONAI
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from torch import nn

    t0 = time.perf_counter()
    patch = list(PATCH_XYZ)  # NibabelIO keeps nibabel's axis order (x, y, z)
    arch = {"n_stages": 4, "features_per_stage": [16, 32, 64, 128], "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 4, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
            "n_conv_per_stage": [1, 1, 1, 1], "n_conv_per_stage_decoder": [1, 1, 1], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}}
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    config = {
        "data_identifier": "bench", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2, "patch_size": patch,
        "median_image_size_in_voxels": [224, 224, 280], "spacing": list(SPACING_XYZ),
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": arch, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": True,
    }
    plans = {"dataset_name": "Dataset999_Bench", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": list(SPACING_XYZ),
             "original_median_shape_after_transp": [224, 224, 280], "image_reader_writer": "NibabelIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": config},
             "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {"0": {
                 "max": 3000.0, "mean": 100.0, "median": 100.0, "min": -1000.0, "percentile_00_5": -200.0,
                 "percentile_99_5": 300.0, "std": 80.0}}}
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "kidney": 1, "tumor": 2},
               "numTraining": 1, "file_ending": ".nii.gz"}
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    torch.manual_seed(0)
    net = PlainConvUNet(input_channels=1, num_classes=3, **{**arch, "conv_op": nn.Conv3d,
                                                           "norm_op": nn.InstanceNorm3d, "nonlin": nn.LeakyReLU})
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    predictor.manual_initialization(net.eval(), pm, cm, [net.state_dict()], dataset, "nnUNetTrainer", None)
    data, props = NibabelIO().read_images([str(image)])
    out.mkdir(parents=True, exist_ok=True)
    predictor.predict_single_npy_array(data, props, None, str(out / "case"), False)
    return {"seconds": time.perf_counter() - t0, "parameters": sum(p.numel() for p in net.parameters())}


def run_worker(python: str, args: list[str], env: dict[str, str] | None = None) -> tuple[dict, float]:
    """Run this script as a worker in a fresh process; return (its JSON line, its peak RSS in MiB)."""
    proc = subprocess.Popen([python, __file__, *args], stdout=subprocess.PIPE, env=env)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"worker {args[:2]} failed with exit code {proc.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1]), usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 1000])
    ap.add_argument("--nnunet-python", default="/work/venv-nnunet/bin/python")
    ap.add_argument("--skip-nnunet", action="store_true", help="medpipe only (split and whole)")
    ap.add_argument("--max-slab-voxels", type=int, default=None, help="the split run's setting (default: config's)")
    ap.add_argument("--mask-only", action="store_true",
                    help="medpipe only, split and whole, up to the written mask (no lesion table, QC, sidecar)")
    ap.add_argument("--worker", choices=["medpipe", "mask", "nnunet"], help=argparse.SUPPRESS)
    ap.add_argument("--paths", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "medpipe":
        print(json.dumps(worker_medpipe(*map(Path, args.paths))))
        return
    if args.worker == "mask":
        print(json.dumps(worker_mask(*map(Path, args.paths))))
        return
    if args.worker == "nnunet":
        print(json.dumps(worker_nnunet(*map(Path, args.paths))))
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        shape = tuple(args.shape)
        t = time.perf_counter()
        image = make_volume(tmp / "ct.nii.gz", shape)  # type: ignore[arg-type]
        print(f"volume {shape} at 0.7 mm built in {time.perf_counter() - t:.0f} s "
              f"({image.stat().st_size / 2**20:.0f} MiB on disk, {2 * int.__mul__(*shape[:2]) * shape[2] / 2**20:.0f} "
              "MiB as int16)", flush=True)
        n_params = make_medpipe_model(tmp / "run", args.max_slab_voxels)
        make_medpipe_model(tmp / "run_whole", 0)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if args.mask_only:
            for name in ("run", "run_whole"):
                got, rss = run_worker(sys.executable, ["--worker", "mask", "--paths", str(tmp / name), str(image),
                                                       str(tmp / f"out_{name}")], env)
                print(f"medpipe {name} up to the mask: peak RSS {rss:.0f} MiB, {json.dumps(got)}", flush=True)
            return
        med, med_rss = run_worker(sys.executable, ["--worker", "medpipe", "--paths", str(tmp / "run"), str(image),
                                                   str(tmp / "out_medpipe")], env)
        print(f"medpipe (split) done: {med_rss:.0f} MiB, {med['seconds']:.0f} s, {json.dumps(med)}", flush=True)
        whole, whole_rss = run_worker(sys.executable, ["--worker", "medpipe", "--paths", str(tmp / "run_whole"),
                                                       str(image), str(tmp / "out_whole")], env)
        print(f"medpipe (whole) done: {whole_rss:.0f} MiB, {whole['seconds']:.0f} s, {json.dumps(whole)}", flush=True)
        if args.skip_nnunet:
            print(f"\nCPU, {os.cpu_count()} cores; volume {shape} int16 at 0.7 mm; network grid {med['network_grid']}")
            print(f"{'':<28}{'peak RSS (MiB)':>16}{'time (s)':>10}")
            print(f"{'medpipe infer, split':<28}{med_rss:>16.0f}{med['seconds']:>10.0f}")
            print(f"{'medpipe infer, whole':<28}{whole_rss:>16.0f}{whole['seconds']:>10.0f}")
            return
        nn_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        nn_env.update({"nnUNet_raw": str(tmp), "nnUNet_preprocessed": str(tmp), "nnUNet_results": str(tmp)})
        nnu, nnu_rss = run_worker(args.nnunet_python, ["--worker", "nnunet", "--paths", str(image),
                                                       str(tmp / "out_nnunet")], nn_env)
    print(f"\nCPU, {os.cpu_count()} cores; volume {shape} int16 at 0.7 mm; network grid {med['network_grid']}")
    print(f"{'':<28}{'peak RSS (MiB)':>16}{'time (s)':>10}{'parameters':>12}")
    print(f"{'medpipe infer, split':<28}{med_rss:>16.0f}{med['seconds']:>10.0f}{n_params:>12,}")
    print(f"{'medpipe infer, whole':<28}{whole_rss:>16.0f}{whole['seconds']:>10.0f}{n_params:>12,}")
    print(f"{'nnU-Net v2 nnUNetPredictor':<28}{nnu_rss:>16.0f}{nnu['seconds']:>10.0f}{nnu['parameters']:>12,}")
    print(f"ratio medpipe / nnU-Net: peak RSS {med_rss / nnu_rss:.2f}, time {med['seconds'] / nnu['seconds']:.2f}")


if __name__ == "__main__":
    main()
