#!/usr/bin/env bash
# docs/kernel.md items 67 and 68: the compiled eval with each decode step's rotary embedding and cache write in the
# split-KV attention kernel (QUANTKIT_ROPE_IN_ATTENTION=1) and its greedy token in one launch
# (QUANTKIT_GREEDY_ONE_LAUNCH=1) against the default, group 128, on one machine, an archive a call (OUT/ln<STEP>.tgz):
#     bash bench/results/launches_round.sh OUT_DIR 1   batch 1: both, then the default, then their GPU tests (~580 s)
#     bash bench/results/launches_round.sh OUT_DIR 2   greedy_bench.py, batch 1 with rope only, then both again (~420 s)
#     bash bench/results/launches_round.sh OUT_DIR 3   batch 8: both, then the default (~420 s)
#     bash bench/results/launches_round.sh OUT_DIR 4   batch 32 with both, then the batch-1 step profiled with both
set -u
. "$(dirname "$0")/round_lib.sh"
round_start ln "${1:?usage: launches_round.sh OUT_DIR STEP}" "${2:?usage: launches_round.sh OUT_DIR STEP}"
unset QUANTKIT_ROPE_IN_ATTENTION QUANTKIT_GREEDY_ONE_LAUNCH
both() { QUANTKIT_ROPE_IN_ATTENTION=1 QUANTKIT_GREEDY_ONE_LAUNCH=1 "$@"; }
case $STEP in
  1) both eval_at both_b1 1 300; eval_at default_b1 1 200
     . bench/device_env.sh > /dev/null
     timeout 70 python3 -m pytest -q -x -p no:cacheprovider tests/test_eval_gpu.py -k "rope_in_attention or one_launch" \
       2>&1 | tail -4 | tee "$D/tests.log" ;;
  2) . bench/device_env.sh > /dev/null
     timeout 60 python3 bench/greedy_bench.py 2>&1 | tee "$D/greedy_bench.log"
     QUANTKIT_ROPE_IN_ATTENTION=1 eval_at rope_b1 1 170; both eval_at both_b1_2 1 170 ;;
  3) both eval_at both_b8 8 200; eval_at default_b8 8 200 ;;
  4) both eval_at both_b32 32 200
     . bench/device_env.sh > /dev/null
     both timeout 220 python3 bench/profile_decode.py --batch 1 --compile --pdl on --fuse \
       --out "$D/decode_profile.json" 2>&1 | grep "^quantized\|^baseline" | tee "$D/profile.log" ;;
esac
round_end
