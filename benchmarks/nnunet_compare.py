"""medpipe's nnU-Net importer vs ``nnUNetv2_predict``: same weights, same inputs, masks compared, time and memory.

Each case runs as its own command, as a user would run it (process start and imports included), alternating
between the two tools; wall time and the peak resident memory of the whole process tree (sampled every 20 ms with
psutil) are recorded per case. Masks are compared voxel by voxel (Dice per label).

    python benchmarks/nnunet_compare.py RESULTS/Dataset501_X/TRAINER__PLANS__CONFIG IMAGES_DIR \\
        --nnunet-python /work/venv-nnunet/bin/python --folds 0 [--no-tta] [--repeats 2]

IMAGES_DIR holds nnU-Net-named inputs (``<case>_0000.nii.gz``). ``--nnunet-python`` is a Python that has
nnunetv2 installed (it may be a separate venv); medpipe runs under the current interpreter. medpipe's side is
``medpipe import nnunet`` once (not timed), then ``medpipe infer PACKAGE`` per case (mask, sidecar, QC, lesion
table); ``--legacy`` times the deprecated ``medpipe infer-nnunet`` on the result folder instead (mask only).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS of the process and its children in MiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    continue
            peak = max(peak, total)
        except psutil.Error:
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return wall, peak / 2**20


def dice_per_label(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    out = {}
    for v in sorted((set(np.unique(a)) | set(np.unique(b))) - {0}):
        x, y = a == v, b == v
        out[int(v)] = 2 * float((x & y).sum()) / max(1, int(x.sum() + y.sum()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("images", type=Path)
    ap.add_argument("--nnunet-python", required=True)
    ap.add_argument("--folds", nargs="+", default=["0"])
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--legacy", action="store_true", help="time medpipe infer-nnunet on the result folder")
    ap.add_argument("--allow-non-hu", action="store_true", help="medpipe infer: inputs that are not CT in HU")
    args = ap.parse_args()

    cases = sorted(p for p in args.images.iterdir() if p.name.endswith("_0000.nii.gz"))
    work = Path(tempfile.mkdtemp(prefix="nnunet-compare-"))
    env = dict(os.environ)
    env.setdefault("nnUNet_raw", str(work))
    env.setdefault("nnUNet_preprocessed", str(work))
    env.setdefault("nnUNet_results", str(work))
    nn_bin = str(Path(args.nnunet_python).parent / "nnUNetv2_predict_from_modelfolder")
    package = work / "model.zip"
    if not args.legacy:
        subprocess.run([sys.executable, "-m", "medpipe", "import", "nnunet", str(args.model), "-o", str(package),
                        *[a for f in args.folds for a in ("--folds", f)]], check=True, env=env)
    rows = []
    for case in cases:
        cid = case.name[: -len("_0000.nii.gz")]
        single = work / "in" / cid
        single.mkdir(parents=True, exist_ok=True)
        shutil.copy(case, single / case.name)
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeats):
            for tool in ("nnunet", "medpipe"):
                out = work / tool / cid
                out.mkdir(parents=True, exist_ok=True)
                if tool == "nnunet":
                    cmd = [nn_bin, "-i", str(single), "-o", str(out), "-m", str(args.model), "-f", *args.folds,
                           "-device", "cpu", "--disable_progress_bar"] + (["--disable_tta"] if args.no_tta else [])
                elif args.legacy:
                    cmd = [sys.executable, "-m", "medpipe", "infer-nnunet", str(args.model), str(single), "-o",
                           str(out), "--device", "cpu", *[a for f in args.folds for a in ("--folds", f)]] + \
                          (["--no-tta"] if args.no_tta else [])
                else:
                    cmd = [sys.executable, "-m", "medpipe", "infer", str(package), str(single), "-o", str(out),
                           "--device", "cpu", "--overwrite", "--tta", "none" if args.no_tta else "all"] + \
                          (["--allow-non-hu"] if args.allow_non_hu else [])
                wall, rss = run_measured(cmd, env)
                if tool not in best or wall < best[tool][0]:
                    best[tool] = (wall, max(rss, best.get(tool, (0, 0))[1]) if tool in best else rss)
        ours = work / "medpipe" / cid / f"{cid}.nii.gz"
        a = np.asarray(nib.load(ours).dataobj)
        b = np.asarray(nib.load(work / "nnunet" / cid / f"{cid}.nii.gz").dataobj)
        rows.append((cid, best["nnunet"], best["medpipe"], int((a != b).sum()), a.size, dice_per_label(a, b)))
        print(f"{cid}: {rows[-1]}", flush=True)

    tta = "off" if args.no_tta else "on"
    print(f"\nfolds {' '.join(args.folds)}, TTA {tta}, load average {os.getloadavg()[0]:.1f}")
    print("| case | nnUNetv2_predict (s) | medpipe (s) | speed-up | nnU-Net peak RSS (MiB) | medpipe peak RSS (MiB) "
          "| voxels differing | Dice per label |")
    print("|---|---|---|---|---|---|---|---|")
    for cid, (tn, rn), (tm, rm), diff, size, dice in rows:
        dice_txt = ", ".join(f"{k}: {v:.4f}" for k, v in dice.items()) or "(both empty)"
        print(f"| {cid} | {tn:.1f} | {tm:.1f} | {tn / tm:.2f}x | {rn:.0f} | {rm:.0f} | {diff} / {size} | {dice_txt} |")
    tn_sum = sum(r[1][0] for r in rows)
    tm_sum = sum(r[2][0] for r in rows)
    print(f"| **total** | **{tn_sum:.1f}** | **{tm_sum:.1f}** | **{tn_sum / tm_sum:.2f}x** | | | | |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
