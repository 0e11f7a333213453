"""Train a small nnU-Net v2 model on the sample CT with nnU-Net's own code, for ``benchmarks/nnunet_compare.py``.

Steps (all nnU-Net 2.8.1 code; nothing of medpipe is used):

1. ``sample_data/kits`` -> an nnU-Net raw dataset ``Dataset501_KitsSample``: ``case_00000``-``case_00008`` in
   ``imagesTr``/``labelsTr``, the held-out ``case_00009``-``case_00011`` in ``imagesTs``.
2. Fingerprint, plan (``ExperimentPlanner``) and preprocess (``3d_fullres``) through
   ``nnunetv2.experiment_planning.plan_and_preprocess_api`` -- the functions behind
   ``nnUNetv2_extract_fingerprint`` / ``nnUNetv2_plan_experiment`` / ``nnUNetv2_preprocess``.
3. A plans edit, ``nnUNetTinyPlans``: the same preprocessing (same ``data_identifier``, spacing and
   normalisation), a PlainConvUNet of 4 stages with 8/16/32/64 features, patch 24x64x64, batch 2 -- so that
   training fits in minutes on 2 CPU cores.
4. Training fold 0 with ``nnUNetTrainer`` itself, on the CPU, its schedule shortened by setting its attributes
   (``num_epochs``, ``num_iterations_per_epoch``, ``initial_lr``, ``oversample_foreground_percent``) before
   ``run_training()``; the trainer writes
   ``RESULTS/Dataset501_KitsSample/nnUNetTrainer__nnUNetTinyPlans__3d_fullres/fold_0/checkpoint_final.pth``
   in the standard layout, next to ``plans.json`` and ``dataset.json``.

Why not ``nnUNetv2_train``: its trainer-class discovery (``recursive_find_python_class`` over
``nnunetv2/training``) imports every trainer module, including the Primus trainers that import ``timm``, which is
not installed (and not needed by PlainConvUNet). Importing ``nnunetv2.training.nnUNetTrainer.nnUNetTrainer``
directly and calling ``run_training()`` is what ``nnUNetv2_train`` does after the lookup. No subclass is used:
``nnUNetv2_predict`` looks the checkpoint's trainer class up by name with the same walk, which also stops at
``timm`` for any name but the ones it meets first (``nnUNetTrainer`` is found before the Primus modules).
The final validation (``perform_actual_validation``) is skipped: it is not needed for the comparison.

    nnUNet_n_proc_DA=1 python benchmarks/nnunet_train_sample.py --work /work/nnunet-work [--epochs 20 --iters 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

HELD_OUT = ("case_00009", "case_00010", "case_00011")
DATASET_ID = 501
DATASET = "Dataset501_KitsSample"


def make_raw(sample: Path, raw: Path) -> None:
    d = raw / DATASET
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    n_train = 0
    for case in sorted(p for p in sample.iterdir() if p.is_dir()):
        test = case.name in HELD_OUT
        shutil.copy(case / "imaging.nii.gz", d / ("imagesTs" if test else "imagesTr") / f"{case.name}_0000.nii.gz")
        shutil.copy(case / "segmentation.nii.gz", d / ("labelsTs" if test else "labelsTr") / f"{case.name}.nii.gz")
        n_train += not test
    (d / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "kidney": 1, "tumor": 2},
        "numTraining": n_train, "file_ending": ".nii.gz"}, indent=2))


def tiny_plans(preprocessed: Path) -> None:
    src = json.loads((preprocessed / DATASET / "nnUNetPlans.json").read_text())
    src["plans_name"] = "nnUNetTinyPlans"
    cfg = src["configurations"]["3d_fullres"]
    cfg["patch_size"] = [24, 64, 64]
    cfg["batch_size"] = 2
    arch = cfg["architecture"]["arch_kwargs"]
    arch["n_stages"] = 4
    arch["features_per_stage"] = [8, 16, 32, 64]
    arch["kernel_sizes"] = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    arch["strides"] = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    arch["n_conv_per_stage"] = [2, 2, 2, 2]
    arch["n_conv_per_stage_decoder"] = [2, 2, 2]
    # the planned spacing axis order: the coarse (2.5 mm) axis must be the first, as the kernel/stride lists assume
    assert max(cfg["spacing"]) == cfg["spacing"][0], cfg["spacing"]
    for name in list(src["configurations"]):
        if name != "3d_fullres":
            del src["configurations"][name]
    (preprocessed / DATASET / "nnUNetTinyPlans.json").write_text(json.dumps(src, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/work/nnunet-work"))
    ap.add_argument("--sample", type=Path, default=Path(__file__).resolve().parents[1] / "sample_data" / "kits")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--lr", type=float, default=2e-2)
    args = ap.parse_args()

    raw, pre, res = (args.work / n for n in ("raw", "preprocessed", "results"))
    for p, var in ((raw, "nnUNet_raw"), (pre, "nnUNet_preprocessed"), (res, "nnUNet_results")):
        p.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(p)
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    os.environ.setdefault("nnUNet_compile", "f")

    # nnunetv2 reads the environment variables at import time
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    make_raw(args.sample, raw)
    extract_fingerprints([DATASET_ID], num_processes=2, check_dataset_integrity=True)
    plan_experiments([DATASET_ID])
    preprocess([DATASET_ID], configurations=("3d_fullres",), num_processes=(2,))
    tiny_plans(pre)
    print(f"planned and preprocessed in {time.perf_counter() - t0:.0f} s", flush=True)

    plans = json.loads((pre / DATASET / "nnUNetTinyPlans.json").read_text())
    plans["continue_training"] = False  # what nnunetv2.run.run_training.get_trainer_from_args adds
    dataset_json = json.loads((pre / DATASET / "dataset.json").read_text())
    trainer = nnUNetTrainer(plans, "3d_fullres", 0, dataset_json, device=torch.device("cpu"))
    # the schedule, set before run_training() -> initialize() builds the optimiser and poly LR schedule from it
    trainer.num_epochs = args.epochs
    trainer.num_iterations_per_epoch = args.iters
    trainer.num_val_iterations_per_epoch = 2
    trainer.initial_lr = args.lr
    trainer.oversample_foreground_percent = 0.66
    trainer.save_every = 10**6
    t1 = time.perf_counter()
    trainer.run_training()
    took = time.perf_counter() - t1
    print(f"trained {args.epochs} x {args.iters} iterations in {took:.0f} s -> {trainer.output_folder}")


if __name__ == "__main__":
    main()
