#!/usr/bin/env bash
# Session 57's device calls on eee3a1d, one H100 (NVIDIA H100 80GB HBM3, driver 580.159.04; self-check:
# launches_eee3a1d_h100_selfcheck.log), after
#     bash bench/results/launches_round.sh OUT 1    eval_llama-3-8b_g128_compiled_eee3a1d_h100_{both,default}_b1.*;
#                                                   its tests (70 s) ran three of four: eval_gpu_tests_h100_eee3a1d.log
#     bash bench/results/launches_round.sh OUT 2    greedy_h100_eee3a1d.log, ..._{rope,both}_b1{,_2}.*
# three calls on the same warm machine, the extension cached, each below as it ran (OUT the call's output folder):
#     bash bench/results/launches_calls_eee3a1d.sh OUT
set -u
OUT=${1:?usage: launches_calls_eee3a1d.sh OUT_DIR}
. "$(dirname "$0")/round_lib.sh"
unset QUANTKIT_ROPE_IN_ATTENTION QUANTKIT_GREEDY_ONE_LAUNCH
# 1. the compiled batch-1 step profiled with both items, then with the default:
#    decode_profile_h100_eee3a1d_{both,default}.*
(. bench/device_env.sh > /dev/null; mkdir -p $OUT/pr
 for m in both default; do
   if [ $m = both ]; then export QUANTKIT_ROPE_IN_ATTENTION=1 QUANTKIT_GREEDY_ONE_LAUNCH=1
   else unset QUANTKIT_ROPE_IN_ATTENTION QUANTKIT_GREEDY_ONE_LAUNCH; fi
   timeout 240 python3 bench/profile_decode.py --batch 1 --compile --pdl on --fuse --out $OUT/pr/profile_$m.json \
     > $OUT/pr/profile_$m.log 2>&1
   echo "$m rc $?"; grep "^quantized\|^baseline" $OUT/pr/profile_$m.log
 done)
# 2. batch 1 with the greedy token in one launch only, then the default again: ..._{greedy_b1,default_b1_2}.*
round_start ln $OUT 5; QUANTKIT_GREEDY_ONE_LAUNCH=1 eval_at greedy_b1 1 180; eval_at default_b1_2 1 180; round_end
# 3. batch 8 with the greedy token in one launch (its 170 s ran out while it wrote the plot: JSON and log only), the
#    default at batch 8, then batch 1 with the greedy token in one launch again:
#    ..._{greedy_b8,default_b8,greedy_b1_2}.*
round_start ln $OUT 6; QUANTKIT_GREEDY_ONE_LAUNCH=1 eval_at greedy_b8 8 170; eval_at default_b8 8 150
QUANTKIT_GREEDY_ONE_LAUNCH=1 eval_at greedy_b1_2 1 120; round_end
