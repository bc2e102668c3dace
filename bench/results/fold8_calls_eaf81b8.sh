#!/usr/bin/env bash
# Session 52's device calls on eaf81b8, one H100 (NVIDIA H100 80GB HBM3, driver 580.159.04), after
#     bash bench/results/fold8_round.sh OUT 585
# (self-check: fold8_h100_eaf81b8_selfcheck.log; its test step stopped at collecting tests/test_eval.py, which imports
# gguf, absent on the GPU image: fold8_h100_eaf81b8_tests_collection_error.log; its evals:
# eval_llama-3-8b_g128_compiled_eaf81b8_h100_{fold,nofold}_b1.*). Then two calls on the same warm machine, the
# extension cached, each below as it ran (OUT the call's output folder):
#     bash bench/results/fold8_calls_eaf81b8.sh OUT
set -u
OUT=${1:?usage: fold8_calls_eaf81b8.sh OUT_DIR}
. bench/device_env.sh > /dev/null
# 1. the fold's, the blocks of 8's, the bit-for-bit and the prefetch GPU tests (5 passed, 81 deselected)
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py \
  -k "fold or eight_warps or bit_for_bit or prefetch" 2>&1 | tail -5
# 2. the compiled batch-1 step profiled with the fold and without it:
#    decode_profile_{fold,nofold}_eaf81b8_h100.{json,log} (the logs: the last lines of the output)
mkdir -p $OUT/prof
for f in 1 0; do
  QUANTKIT_NORM_FOLD=$f timeout 270 python3 bench/profile_decode.py --batch 1 --compile --pdl on --fuse \
    --out $OUT/prof/decode_profile_fold$f.json 2>&1 | grep -v "quantizing\|warn" | tail -8 > $OUT/prof/fold$f.log
  cat $OUT/prof/fold$f.log
done
