#!/usr/bin/env bash
# Session 51's device calls on 4d26776, one H100 (NVIDIA H100 80GB HBM3, driver 580.159.04), after
#     bash bench/results/wk8_ab_round.sh OUT 585
# whose first eval (blocks of 8) the round's deadline cut off after three of its four timed runs, behind a fresh
# build: its self-check log is wk8_ab_4d26776_h100_selfcheck.log; its second eval (QUANTKIT_STREAM_WK_WARPS=4)
# finished: eval_llama-3-8b_g128_compiled_4d26776_h100_wk4.*. Then three calls on the same warm machine, the
# extension cached, each below as it ran (OUT the call's output folder):
#     bash bench/results/ab_4d26776_calls.sh OUT
set -u
OUT=${1:?usage: ab_4d26776_calls.sh OUT_DIR}
. bench/device_env.sh > /dev/null 2>&1
unset QUANTKIT_STREAM_WK_WARPS
# 1. the eval with blocks of 8 (the default) again: eval_llama-3-8b_g128_compiled_4d26776_h100_wk8.*
STEPS=compiled COMPILED_BATCH=1,8 bash bench/eval_speed.sh "$OUT/eval_wk8" 330 2>&1 | grep -v quantizing | tail -14
# 2. the kernels' and the eval's GPU tests, whole (gpu_tests_h100_4d26776.log), then the four kernels a layer chained
#    at M = 1 and 8, the default against the --wk8 variants and wk4_all (chain_h100_4d26776.{json,log})
mkdir -p "$OUT/r"
timeout 330 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py tests/test_eval_gpu.py 2>&1 \
  | tail -15 | tee "$OUT/r/tests.log"
timeout 150 python3 bench/chain_bench.py --ms 1,8 --no-sweep --wk8 --reps 10 --out "$OUT/r/chain.json" 2>&1 \
  | grep -v "^layers" | tail -40 | tee "$OUT/r/chain.log"
# 3. the eval at batch 32: eval_llama-3-8b_g128_compiled_4d26776_h100_b32.*
STEPS=compiled COMPILED_BATCH=32 bash bench/eval_speed.sh "$OUT/eval_b32" 300 2>&1 | grep -v quantizing | tail -12
