#!/usr/bin/env bash
# Issue 7 speed runs on a GPU: `quantkit eval --throughput` of W4A16 (group 128 and group 32) against bf16 on
# Llama-3-8B shapes (random weights: recipes/configs/llama-3-8b.json), then the GPU eval tests, then, with the
# time left, the run with the decode step torch.compile'd (--compile) at the batches of COMPILED_BATCH (1) and the group
# size of COMPILED_GROUP (128).
#
#     bash bench/eval_speed.sh OUT_DIR [DEADLINE_SECONDS]
#
# Writes OUT_DIR/eval_llama-3-8b_g{128,32}[_compiled].{json,md,png} and logs. Each step has its own timeout so
# that one hang cannot take the others' results with it; the whole script ends within DEADLINE_SECONDS (470).
# CONFIG, BATCH, PROMPT and GEN override the shapes (a dry run on a CPU: CONFIG=tiny-llama PROMPT=8 GEN=2);
# STEPS picks the steps and their order (default "g128 g32 tests compiled"; STEPS=compiled: only the compiled run);
# COMPILED_LIMIT caps the compiled run's seconds (default: all the time left).
# EXTRA adds options to every eval (EXTRA=--quantize-lm-head: lm_head 4-bit too).
set -u -o pipefail
OUT=${1:?usage: bench/eval_speed.sh OUT_DIR [DEADLINE_SECONDS]}
DEADLINE=$(( $(date +%s) + ${2:-470} ))
mkdir -p "$OUT"
left() { echo $(( DEADLINE - $(date +%s) )); }
CONFIG=${CONFIG:-llama-3-8b} BATCH=${BATCH:-1,8,32} PROMPT=${PROMPT:-512} GEN=${GEN:-128}

. "$(dirname "$0")/device_env.sh"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv \
  | tee "$OUT/nvidia-smi.csv"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"

echo "== kernel build and self-check ($(left) s left)"
# If the kernels do not build or fail their self-check, measure through the reference backend and say so. A fresh
# build takes 80-200 s on the H200 machine: one cut short by the timeout stops the script instead (its figures would
# be the reference's, not the kernels').
build_limit=$(( $(left) - 250 > 200 ? $(left) - 250 : 200 ))
timeout $build_limit python3 -c "
import logging, sys; logging.basicConfig(level=logging.INFO)
from quantkit.kernels import kernel_available, self_check
ok, why = kernel_available(); print('kernel_available', ok, why)
sys.exit(1) if not ok else self_check()" 2>&1 | tee "$OUT/kernel_selfcheck.log"
build_rc=${PIPESTATUS[0]}
if [ "$build_rc" -eq 0 ]; then
  BACKEND=${BACKEND:-kernel}
elif [ "$build_rc" -eq 124 ]; then
  echo "error: the kernel build and self-check did not finish in $build_limit s; give bench/eval_speed.sh a longer deadline" >&2
  exit 1
else
  echo "W4A16 kernels unavailable or failed their self-check: measuring through the reference backend"
  BACKEND=reference
fi

run() {  # run NAME SECONDS ARGS...
  local name=$1 limit=$2; shift 2
  echo "== $name ($(left) s left, limit $limit s)"
  timeout "$limit" python3 -m quantkit eval --random-weights "$CONFIG" --throughput --batch "$BATCH" --prompt-len "$PROMPT" \
    --gen-len "$GEN" --backend "$BACKEND" --json "$OUT/$name.json" --report "$OUT/$name.md" --plot "$OUT/$name.png" \
    ${EXTRA:-} "$@" 2>&1 | tee "$OUT/$name.log"
}
for step in ${STEPS:-g128 g32 tests compiled}; do
  case $step in
    g128|g32) run eval_${CONFIG}_$step $(( $(left) - 60 < 170 ? $(left) - 60 : 170 )) --group-size ${step#g} ;;
    tests)
      echo "== GPU eval tests ($(left) s left)"
      timeout 50 python3 -m pytest -q -p no:cacheprovider tests/test_eval_gpu.py 2>&1 | tee "$OUT/test_eval_gpu.log" ;;
    compiled)  # one compile per model (dynamic shapes): every batch of COMPILED_BATCH reuses it
      limit=$(( $(left) - 5 < ${COMPILED_LIMIT:-100000} ? $(left) - 5 : ${COMPILED_LIMIT:-100000} ))
      [ "$limit" -gt 60 ] && run eval_${CONFIG}_g${COMPILED_GROUP:-128}_compiled $limit --group-size "${COMPILED_GROUP:-128}" \
        --compile --batch "${COMPILED_BATCH:-1}" ;;
  esac
done
echo "== done ($(left) s left)"
