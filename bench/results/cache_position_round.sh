#!/usr/bin/env bash
# docs/kernel.md item 66: the compiled eval with the static cache's layers writing at the runner's position (the
# default from session 54, throughput.SHARED_CACHE_POSITION) against transformers' own per-layer position counters
# (QUANTKIT_SHARED_CACHE_POSITION=0), group 128, on one machine, one archive a call, OUT_DIR/cp<STEP>.tgz:
#     bash bench/results/cache_position_round.sh OUT_DIR 1   batch 1 both ways (the first builds the kernels: ~450 s)
#     bash bench/results/cache_position_round.sh OUT_DIR 2   batch 8 both ways (~330 s), then tests/test_eval_gpu.py
#     bash bench/results/cache_position_round.sh OUT_DIR 3   batch 32 as the default, then the batch-1 step profiled
set -u
. "$(dirname "$0")/round_lib.sh"
round_start cp "${1:?usage: cache_position_round.sh OUT_DIR STEP}" "${2:?usage: cache_position_round.sh OUT_DIR STEP}"
unset QUANTKIT_SHARED_CACHE_POSITION
case $STEP in
  1) eval_at shared_b1 1 310; QUANTKIT_SHARED_CACHE_POSITION=0 eval_at counters_b1 1 250 ;;
  2) eval_at shared_b8 8 240; QUANTKIT_SHARED_CACHE_POSITION=0 eval_at counters_b8 8 210
     . bench/device_env.sh > /dev/null
     timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_eval_gpu.py 2>&1 | tail -4 | tee "$D/tests.log" ;;
  3) eval_at shared_b32 32 330
     . bench/device_env.sh > /dev/null
     timeout 220 python3 bench/profile_decode.py --batch 1 --compile --pdl on --fuse --out "$D/decode_profile.json" 2>&1 \
       | grep "^quantized\|^baseline" | tee "$D/profile.log" ;;
esac
round_end
