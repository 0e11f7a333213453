"""The pipelined case loop against the sequential one: wall time vs the sum of the stages, device-busy fraction.

Cases: the four sample CT cases (kits), copied to ``--cases`` inputs (default 20), optionally upsampled
(``--zoom``) so that reading, preprocessing and writing weigh what they weigh on real scans. Model: the sample-ct
config with random weights (seed 0), or ``--run`` a trained run. Each loop loads the weights once and segments
every case; ``--tta`` multiplies the network stage. Prints one table.

    python benchmarks/pipeline.py [--cases 20] [--zoom 1.5] [--device cpu|cuda] [--tta none|flip|all]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_cases(out: Path, n: int, zoom: float) -> list[Path]:
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    sources = sorted((REPO / "sample_data" / "kits").glob("case_*/imaging.nii.gz"))
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(n):
        src = sources[i % len(sources)]
        dst = out / f"case_{i:03d}.nii.gz"
        if zoom == 1.0:
            shutil.copy(src, dst)
        else:
            img = nib.load(str(src))
            data = ndimage.zoom(np.asarray(img.dataobj, dtype=np.float32), zoom, order=1).astype(np.int16)
            aff = img.affine.copy()
            aff[:3, :3] /= zoom
            new = nib.Nifti1Image(data, aff)
            new.set_qform(aff, 1)
            new.set_sform(aff, 1)
            nib.save(new, str(dst))
        made.append(dst)
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--zoom", type=float, default=1.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tta", default="none")
    ap.add_argument("--run", type=Path, default=None)
    args = ap.parse_args()
    import torch

    from medpipe.config import load_config
    from medpipe.inference.batch import infer
    from medpipe.models.checkpoint import save_checkpoint
    from medpipe.models.factory import build_model
    from medpipe.runtime import resolve_device

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run = args.run
        if run is None:
            cfg = load_config(REPO / "pipelines" / "sample-ct.yaml")
            torch.manual_seed(0)
            run = tmp / "run"
            run.mkdir()
            save_checkpoint(run / "best.pt", build_model(cfg), cfg)
        inputs = make_cases(tmp / "cases", args.cases, args.zoom)
        infer(run, inputs[:1], tmp / "warmup", device=device, tta=args.tta)  # first-call costs out of the timings
        rows = {}
        for name, pipelined in (("sequential", False), ("pipelined", True)):
            t0 = time.perf_counter()
            res = infer(run, inputs, tmp / name, device=device, tta=args.tta, pipelined=pipelined)
            wall = time.perf_counter() - t0
            failed = [c for c in res.cases if c.status != "ok"]
            if failed:
                raise SystemExit(f"{name}: {failed[0].case_id} failed: {failed[0].error}")
            rows[name] = (wall, res.stages)
    seq_wall = rows["sequential"][0]
    pip_wall, stages = rows["pipelined"]
    if stages is None:
        raise SystemExit("the pipelined run returned no stage times")
    print(f"{args.cases} cases (sample CT x{args.zoom:g}), device {device}, tta {args.tta}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'':<34}{'seconds':>10}")
    print(f"{'sequential loop (wall)':<34}{seq_wall:>10.1f}")
    print(f"{'pipelined loop (wall)':<34}{pip_wall:>10.1f}")
    for key in ("read_s", "compute_s", "write_s", "sum_of_stages_s"):
        print(f"{'  pipelined: ' + key.removesuffix('_s').replace('_', ' '):<34}{stages[key]:>10.1f}")
    print(f"speed-up sequential / pipelined: {seq_wall / pip_wall:.2f}x; pipelined wall / sum of stages: "
          f"{pip_wall / stages['sum_of_stages_s']:.2f}; device (network stage) busy: "
          f"{100 * stages['compute_busy_fraction']:.0f} % of the wall time")


if __name__ == "__main__":
    main()
