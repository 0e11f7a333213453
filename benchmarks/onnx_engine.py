"""CPU inference engines side by side: PyTorch vs ONNX Runtime on the same package, same cases, same settings.

Packages ``--run`` with ``--onnx`` (the ONNX file is checked against PyTorch at packaging time), then segments the
cases with ``Predictor(package, engine=torch|onnxruntime)`` on the CPU, alternating the engines ``--repeats``
times. Reports per case the sliding-window time (the only stage that differs) and the end-to-end time of
``segment`` (preprocess + network + export), best of the repeats, the ratio, and the Dice of the two engines' masks
per label (must be >= 0.999). Cases: the run's validation cases (``split.json``) and one sample CT upsampled to
256x256x128 (as in ``benchmarks/infer_e2e.py``).

    python benchmarks/onnx_engine.py --run runs/sample-ct/model [--repeats 3] [--threads 2]
    python benchmarks/onnx_engine.py --random-weights pipelines/sample-ct.yaml   # no trained run at hand

The table also gives the voxels per label of the torch masks, so that an agreement of empty masks (an
under-trained model) is visible. ``--random-weights CONFIG``: the config's network with seeded random weights
(timings do not depend on the weights; random logits make the masks noisy, a harder agreement test).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2 * (a & b).sum() / denom)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path)
    parser.add_argument("--random-weights", type=Path, metavar="CONFIG")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for both engines")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from benchmarks.infer_e2e import make_volume
    from medpipe.inference.inputs import collect_inputs, load_case
    from medpipe.inference.predictor import Predictor
    from medpipe.models.packaging import build_package

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="onnx-bench-"))
    if args.random_weights:
        from medpipe.config import load_config
        from medpipe.models.checkpoint import save_checkpoint
        from medpipe.models.factory import build_model

        cfg = load_config(args.random_weights)
        torch.manual_seed(0)
        args.run = tmp / "random"
        save_checkpoint(args.run / "best.pt", build_model(cfg), cfg)
    if args.run is None:
        parser.error("--run or --random-weights is needed")
    t0 = time.perf_counter()
    result = build_package([args.run], tmp / "model.zip", onnx=True)
    print(f"packaged with ONNX in {time.perf_counter() - t0:.1f} s; check: "
          + ", ".join(f"fold {c.fold} max|diff| {c.max_abs_diff:.2g}" for c in result.onnx_checks))
    split = json.loads((args.run / "split.json").read_text()) if (args.run / "split.json").is_file() else {}
    kits = REPO / "sample_data" / "kits"
    files = [kits / cid / "imaging.nii.gz" for cid in split.get("val", [])] or \
        sorted(kits.glob("case_*/imaging.nii.gz"))[:3]
    big = make_volume(tmp / "case_big.nii.gz")
    cases = []
    for f in [*files, big]:
        case = collect_inputs([f], ("CT",))[0]
        loaded = load_case(case, 1, None)
        cases.append((f.parent.name if f.name == "imaging.nii.gz" else "upsampled 256x256x128", loaded))

    engines = {"torch": Predictor(tmp / "model.zip", "cpu", engine="torch"),
               "onnxruntime": Predictor(tmp / "model.zip", "cpu", engine="onnxruntime")}
    from medpipe.models.onnx import OnnxModule

    # the same thread count for both engines (ONNX Runtime defaults to one thread per physical core)
    engines["onnxruntime"].models = [OnnxModule(_onnx_bytes(result.path), args.threads)]
    best: dict[tuple[str, str], tuple[float, float]] = {}
    masks: dict[tuple[str, str], np.ndarray] = {}
    for _ in range(args.repeats):
        for name, seg in engines.items():
            for cid, loaded in cases:
                t = time.perf_counter()
                labels, details = seg.segment(loaded)
                total = time.perf_counter() - t
                sw = details["timings_s"]["inference"]
                prev = best.get((name, cid), (float("inf"), float("inf")))
                best[(name, cid)] = (min(prev[0], sw), min(prev[1], total))
                masks[(name, cid)] = labels

    rows = []
    print("\n| case | grid | sliding window torch (s) | ONNX Runtime (s) | ratio | end to end torch (s) | "
          "ONNX Runtime (s) | ratio | voxels 1 / 2 | Dice 1 | Dice 2 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cid, loaded in cases:
        (sw_t, tot_t), (sw_o, tot_o) = best[("torch", cid)], best[("onnxruntime", cid)]
        a, b = masks[("torch", cid)], masks[("onnxruntime", cid)]
        d = [dice(a == k, b == k) for k in (1, 2)]
        counts = [int((a == k).sum()) for k in (1, 2)]
        rows.append({"case": cid, "shape": list(loaded.array.shape[1:]), "sw_torch": sw_t, "sw_ort": sw_o,
                     "total_torch": tot_t, "total_ort": tot_o, "dice": d, "voxels": counts})
        print(f"| {cid} | {'x'.join(map(str, loaded.array.shape[1:]))} | {sw_t:.2f} | {sw_o:.2f} | "
              f"{sw_t / sw_o:.2f}x | {tot_t:.2f} | {tot_o:.2f} | {tot_t / tot_o:.2f}x | {counts[0]} / {counts[1]} | "
              f"{d[0]:.4f} | {d[1]:.4f} |")
    if min(min(r["dice"]) for r in rows) < 0.999:
        print("WARNING: the engines' masks disagree (Dice < 0.999)")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))


def _onnx_bytes(package: Path) -> bytes:
    import zipfile

    with zipfile.ZipFile(package) as zf:
        return zf.read("onnx/fold_0.onnx")


if __name__ == "__main__":
    main()
