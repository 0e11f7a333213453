#!/usr/bin/env bash
# One script for a GPU machine: the CUDA tests and the GPU benchmarks, in under 10 minutes, ending with one table.
#
#   bash benchmarks/gpu.sh            # from the repository root, with medpipe importable (pip install -e .)
#   PYTHON=/path/to/python bash benchmarks/gpu.sh
#
# Steps (each with its own time limit, so that one slow step cannot eat the others' time):
#   1. CUDA tests: tests/training/test_cuda.py (AMP training, GPU = CPU inference), tests/inference/test_cuda.py (fp16
#      stitching of a 2-fold x TTA ensemble, the out-of-memory ladder)
#   2. AMP training step: benchmarks/train_throughput.py --device cuda (medpipe loop vs MONAI tutorial loop)
#   3. a short AMP training of the sample CT model (its weights feed steps 4-5)
#   4. end-to-end inference vs the MONAI-tutorial pipeline, same weights: benchmarks/infer_e2e.py --device cuda
#   5. TTA cost and device-busy fraction over 20 cases: benchmarks/pipeline.py --device cuda --tta none|all
#   6. medpipe batch, one worker per GPU: cases/hour and device-busy fraction (nvidia-smi) against `medpipe infer`
#      and a one-GPU batch, same 20 cases: benchmarks/gpu_batch.sh
# Logs go to ${OUT:-/tmp/medpipe-gpu}/*.log; the final table quotes the lines that carry the figures.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=${OUT:-/tmp/medpipe-gpu}
mkdir -p "$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
START=$(date +%s)

if ! "$PY" -c "import torch, monai, medpipe; assert torch.cuda.is_available()" 2>"$LOG/env.log"; then
  echo "needs CUDA torch, monai and medpipe importable with $PY (see $LOG/env.log)"; exit 2
fi
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(), '| torch', torch.__version__)" | tee "$LOG/env.log"

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$LOG/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $(( $(date +%s) - t0 )) s" | tee -a "$LOG/steps.log"
}

step tests 180 "$PY" -m pytest -q -p no:cacheprovider tests/training/test_cuda.py tests/inference/test_cuda.py \
    "tests/inference/test_slabs.py::test_split_on_cuda_matches_whole"
step train_step 90 "$PY" benchmarks/train_throughput.py --device cuda --rounds 2
step train 90 "$PY" -m medpipe.cli train pipelines/sample-ct.yaml --out "$LOG/run" --device cuda --epochs 6
step e2e 90 "$PY" benchmarks/infer_e2e.py --run "$LOG/run" --device cuda --repeats 2
step tta_none 60 "$PY" benchmarks/pipeline.py --run "$LOG/run" --device cuda --cases 20 --zoom 1.5 --tta none
step tta_all 75 "$PY" benchmarks/pipeline.py --run "$LOG/run" --device cuda --cases 20 --zoom 1.5 --tta all
"$PY" -c "import sys; from pathlib import Path; sys.path.insert(0, 'benchmarks'); from pipeline import make_cases; \
make_cases(Path(sys.argv[1]), 20, 1.5)" "$LOG/batch_cases" >"$LOG/batch_cases.log" 2>&1
step batch 150 env PYTHON="$PY" bash benchmarks/gpu_batch.sh "$LOG/run" "$LOG/batch_cases" "$LOG/batch"

pick() { grep -E "$2" "$LOG/$1.log" 2>/dev/null | tail -1 | sed 's/^ *//'; }
echo
echo "================ medpipe on $(head -1 "$LOG/env.log") ================"
printf '%-22s| %s\n' "step" "result"
printf '%-22s| %s\n' "CUDA tests" "$(pick tests 'passed|failed|error')"
printf '%-22s| %s\n' "AMP training step" "$(pick train_step '^medpipe')"
printf '%-22s| %s\n' "" "$(pick train_step 'speed-up')"
printf '%-22s| %s\n' "e2e inference (s)" "$(pick e2e '^total')  [stage, MONAI tutorial, medpipe]"
printf '%-22s| %s\n' "" "$(pick e2e 'ratio')"
printf '%-22s| %s\n' "20 cases, no TTA" "$(pick tta_none 'pipelined loop')"
printf '%-22s| %s\n' "" "$(pick tta_none 'device')"
printf '%-22s| %s\n' "20 cases, TTA all (8x)" "$(pick tta_all 'pipelined loop')"
printf '%-22s| %s\n' "" "$(pick tta_all 'device')"
printf '%-22s| %s\n' "batch: runner" "wall (s) | cases/hour | GPU busy (mean) | GPU memory (mean)"
for r in infer batch-1gpu batch-all-gpus; do printf '%-22s| %s\n' "" "$(pick batch "^\| $r ")"; done
cat "$LOG/steps.log"
echo "total $(( $(date +%s) - START )) s; logs in $LOG"
