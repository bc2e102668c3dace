#!/usr/bin/env bash
# docs/kernel.md item 67: the compiled eval with each decode step's rotary embedding and cache write in the split-KV
# attention kernel (QUANTKIT_ROPE_IN_ATTENTION=1, attention.ROPE_IN_ATTENTION) against the default (inductor's kernel
# a layer before attention), group 128, on one machine, one archive a call, OUT_DIR/rope<STEP>.tgz:
#     bash bench/results/rope_round.sh OUT_DIR 1   batch 1 with it, then without (the first builds the kernels: ~450 s)
#     bash bench/results/rope_round.sh OUT_DIR 2   its GPU tests, then batch 8 both ways (~420 s)
#     bash bench/results/rope_round.sh OUT_DIR 3   batch 1 both ways again, then batch 32 with it (~440 s)
#     bash bench/results/rope_round.sh OUT_DIR 4   the batch-1 step profiled with it (~220 s)
set -u
. "$(dirname "$0")/round_lib.sh"
round_start rope "${1:?usage: rope_round.sh OUT_DIR STEP}" "${2:?usage: rope_round.sh OUT_DIR STEP}"
unset QUANTKIT_ROPE_IN_ATTENTION
case $STEP in
  1) QUANTKIT_ROPE_IN_ATTENTION=1 eval_at rope_b1 1 310; eval_at default_b1 1 250 ;;
  2) . bench/device_env.sh > /dev/null
     timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_eval_gpu.py -k "rope_in_attention" 2>&1 | tail -4 \
       | tee "$D/tests.log"
     QUANTKIT_ROPE_IN_ATTENTION=1 eval_at rope_b8 8 200; eval_at default_b8 8 200 ;;
  3) QUANTKIT_ROPE_IN_ATTENTION=1 eval_at rope_b1_2 1 150; eval_at default_b1_2 1 150
     QUANTKIT_ROPE_IN_ATTENTION=1 eval_at rope_b32 32 200 ;;
  4) . bench/device_env.sh > /dev/null
     QUANTKIT_ROPE_IN_ATTENTION=1 timeout 220 python3 bench/profile_decode.py --batch 1 --compile --pdl on --fuse \
       --out "$D/decode_profile.json" 2>&1 | grep "^quantized\|^baseline" | tee "$D/profile.log" ;;
esac
round_end
