#!/usr/bin/env bash
# Batch throughput on a GPU server: `medpipe batch --gpus all` (one worker per GPU) against `--gpus 0` (one worker)
# and `medpipe infer`, with the device-busy fraction sampled by nvidia-smi while each runs.
#
#   benchmarks/gpu_batch.sh RUN_DIR CASES_DIR [WORK_DIR]
#
# RUN_DIR: a trained run folder (best.pt) or checkpoint; CASES_DIR: NIfTI files (e.g. 50 real CTs).
# Prints a markdown table: runner, wall seconds, cases/hour, mean GPU utilisation (%) per GPU, mean memory used.
# Record the figures in docs/benchmarks.md ("Batch runner" section) with the GPU model and driver.
set -euo pipefail
RUN=${1:?run folder}; CASES=${2:?cases folder}; WORK=${3:-$(mktemp -d /tmp/medpipe-gpu-batch.XXXX)}
PY=${PYTHON:-python}
N=$(find "$CASES" -maxdepth 1 -name '*.nii*' | wc -l)
NGPU=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
echo "cases: $N, GPUs: $NGPU ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1))"

sample() {  # sample utilisation every 0.5 s into $1 until killed
  nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 > "$1"
}

run() {  # run NAME OUT -- command...
  local name=$1 out=$2; shift 3
  rm -rf "$out"
  sample "$WORK/$name.smi" & local sampler=$!
  local t0; t0=$(date +%s.%N)
  "$@" > "$WORK/$name.log" 2>&1 || echo "($name exited with $?; see $WORK/$name.log)"
  local t1; t1=$(date +%s.%N)
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  "$PY" - "$name" "$t0" "$t1" "$N" "$WORK/$name.smi" <<'PYEOF'
import sys, collections
name, t0, t1, n, smi = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
util, mem = collections.defaultdict(list), collections.defaultdict(list)
for line in open(smi):
    parts = [p.strip() for p in line.split(",")]
    if len(parts) == 3 and parts[1].isdigit():
        util[parts[0]].append(int(parts[1])); mem[parts[0]].append(int(parts[2]))
wall = t1 - t0
busy = " ".join(f"{g}:{sum(v)/len(v):.0f}%" for g, v in sorted(util.items()))
mb = " ".join(f"{g}:{sum(v)/len(v):.0f}MiB" for g, v in sorted(mem.items()))
print(f"| {name} | {wall:.1f} | {n / wall * 3600:.0f} | {busy} | {mb} |")
PYEOF
}

echo "| runner | wall (s) | cases/hour | GPU busy (mean) | GPU memory (mean) |"
echo "|---|---|---|---|---|"
run infer "$WORK/infer" -- "$PY" -m medpipe.cli infer "$RUN" "$CASES" -o "$WORK/infer" --device cuda
run batch-1gpu "$WORK/b1" -- "$PY" -m medpipe.cli batch "$RUN" "$CASES" -o "$WORK/b1" --gpus 0
run batch-all-gpus "$WORK/ball" -- "$PY" -m medpipe.cli batch "$RUN" "$CASES" -o "$WORK/ball" --gpus all
echo "logs and samples: $WORK"
