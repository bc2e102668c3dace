#!/usr/bin/env bash
# docs/kernel.md item 69: the compiled eval with each decode step's rotary embedding and cache write in the 4-bit
# q/k/v kernel's epilogue (QUANTKIT_ROPE_IN_QKV=1, fuse.ROPE_IN_QKV) against the same without it
# (QUANTKIT_ROPE_IN_QKV=0), group 128, on one machine, an archive a call (OUT/rq<STEP>.tgz):
#     bash bench/results/rope_qkv_round.sh OUT_DIR 1   its GPU tests (stop on a failure), then batch 1 with it (~560 s)
#     bash bench/results/rope_qkv_round.sh OUT_DIR 2   batch 1 without it, then with it again (~420 s)
#     bash bench/results/rope_qkv_round.sh OUT_DIR 3   batch 8 with it, then without it (~420 s)
#     bash bench/results/rope_qkv_round.sh OUT_DIR 4   batch 32 with it (it does not run there: the default's
#                                                      steps), then the batch-1 step profiled with it and without
#     bash bench/results/rope_qkv_round.sh OUT_DIR 5   one call for a session with little device time left: batch 1
#                                                      with it, then without it, then its GPU tests in what is left of
#                                                      SECONDS_LEFT (590) s
set -u
. "$(dirname "$0")/round_lib.sh"
round_start rq "${1:?usage: rope_qkv_round.sh OUT_DIR STEP}" "${2:?usage: rope_qkv_round.sh OUT_DIR STEP}"
unset QUANTKIT_ROPE_IN_QKV
on() { QUANTKIT_ROPE_IN_QKV=1 "$@"; }
off() { QUANTKIT_ROPE_IN_QKV=0 "$@"; }
case $STEP in
  1) (. bench/device_env.sh > /dev/null
      timeout 330 python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels_gpu.py::test_rope_epilogue \
        tests/test_eval_gpu.py::test_rope_in_qkv_kernel_steps_and_the_compiled_graphed_run 2>&1 | tail -30 \
        > "$D/tests.log"; rc=${PIPESTATUS[0]}; tail -4 "$D/tests.log"; exit $rc) \
       && on eval_at rope_b1 1 230 ;;
  2) off eval_at off_b1 1 200; on eval_at rope_b1_2 1 200 ;;
  5) end=$(( $(date +%s) + ${SECONDS_LEFT:-590} ))
     (. bench/device_env.sh > /dev/null  # the extension's build and self-check first, outside the evals' limits
      timeout 240 python3 -c "from quantkit.kernels import self_check; self_check(); print('self-check passed')" \
        2>&1 | tail -2 | tee "$D/selfcheck.log")
     left() { echo $(( end - $(date +%s) )); }
     on eval_at rope_b1 1 200; [ "$(left)" -gt 120 ] && off eval_at off_b1 1 $(( $(left) < 200 ? $(left) : 200 ))
     [ "$(left)" -gt 30 ] && (. bench/device_env.sh > /dev/null
      timeout "$(left)" python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py::test_rope_epilogue \
        tests/test_eval_gpu.py::test_rope_in_qkv_kernel_steps_and_the_compiled_graphed_run 2>&1 | tail -30 \
        > "$D/tests.log"; tail -4 "$D/tests.log") ;;
  3) on eval_at rope_b8 8 200; off eval_at off_b8 8 200 ;;
  4) on eval_at rope_b32 32 230
     . bench/device_env.sh > /dev/null
     for side in rope off; do
       export QUANTKIT_ROPE_IN_QKV=$([ $side = rope ] && echo 1 || echo 0)
       timeout 130 python3 bench/profile_decode.py --batch 1 --compile --pdl on --fuse \
         --out "$D/decode_profile_$side.json" 2>&1 | grep "^quantized\|^baseline" | tee "$D/profile_$side.log"
     done ;;
esac
round_end
