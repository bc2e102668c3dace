#!/usr/bin/env bash
# Session 40 (docs/kernel.md item 53): the 4-bit gated pairs (gate/up's SiLU and multiply in the decode kernel's
# epilogue, down as its programmatic launch) on the GPU, on one warm machine, each call's outputs in one archive:
#     bash bench/results/glu_round.sh OUT_DIR 1 [SECONDS]   build, the epilogue's GPU test, eval g128 compiled b1/8/32
#     bash bench/results/glu_round.sh OUT_DIR 2 [SECONDS]   the batch-1/8 step profiled with the epilogue on and off
#     bash bench/results/glu_round.sh OUT_DIR 3 [SECONDS]   eval g128 compiled b1/8/32 with lm_head 4-bit too
#     bash bench/results/glu_round.sh OUT_DIR 4 [SECONDS]   the warp-specialized kernel's epilogue too (QUANTKIT_GLU_WS=1,
#                                                           item 54): build, its GPU tests and self-check, eval g128
#                                                           compiled b1/8/32; then step 1's eval again on the same
#                                                           machine (QUANTKIT_GLU_WS=0 ... variant_round.sh) to compare
# How it went (session 40, one NVIDIA H100 80GB HBM3, docs/kernel.md item 53):
#   1. bash bench/results/glu_round.sh $OUT 1 590 on d556739: the self-check refused its own gated-pair case (halves
#      of 264 rows, which the kernels cannot prepare), 105 s with the build; fixed in 7882e82
#   2. bash bench/results/glu_round.sh $OUT 1 590 on 7882e82: 370 s   -> glu_h100_{selfcheck,tests}_7882e82.log,
#                                                                         eval_llama-3-8b_g128_compiled_7882e82_h100_glu.*
#   3. QUANTKIT_GLU_EPILOGUE=0 QUANTKIT_GLU_PDL=0 COMPILED_BATCH=1,8,32 bash bench/results/variant_round.sh $OUT glu_off 420
#                                                               272 s   -> eval_llama-3-8b_g128_compiled_7882e82_h100_glu_off.*
#   Steps 2 and 3 of this script did not run: the session's device time was spent.
# Session 41, one NVIDIA H100 80GB HBM3 (a fresh machine), on ea58d9e (the warp-specialized kernel's epilogue, item 54):
#   4. bash bench/results/glu_round.sh $OUT 4 590: its GPU tests cut off by their 150 s limit (the extension's first
#      build ran inside pytest), no eval; the limit raised to 330 s
#   5. bash bench/results/glu_round.sh $OUT 4 590: 392 s  -> glu_ws_h100_{tests,selfcheck}_ea58d9e.log,
#                                                          eval_llama-3-8b_g128_compiled_ea58d9e_h100_glu_ws.*
#   6. QUANTKIT_GLU_WS=0 bash bench/results/variant_round.sh $OUT ws_off 420
#                                                    300 s  -> eval_llama-3-8b_g128_compiled_ea58d9e_h100_ws_off.*
#   7. QUANTKIT_GLU_WS=1 bash bench/results/glu_round.sh $OUT 3 420
#                                                    360 s  -> eval_llama-3-8b_g128_compiled_lm_head_ea58d9e_h100_glu_ws.*
#   8. QUANTKIT_GLU_WS=1 bash bench/results/glu_round.sh $OUT 2 440
#                                                    276 s  -> decode_profile_glu_ea58d9e_h100.{json,log}
set -u
OUT=${1:?usage: glu_round.sh OUT_DIR STEP [SECONDS]}
STEP=${2:?usage: glu_round.sh OUT_DIR STEP [SECONDS]}
TOTAL=${3:-585}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/glu$STEP"
mkdir -p "$D"
case $STEP in
  1)
    . bench/device_env.sh
    timeout 200 python3 -c "
import logging, sys; logging.basicConfig(level=logging.INFO)
from quantkit.kernels import kernel_available, self_check
ok, why = kernel_available(); print('kernel_available', ok, why)
sys.exit(1) if not ok else self_check()" 2>&1 | tee "$D/kernel_selfcheck.log"
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py -k "gated_pair or cluster_split_k or stream_warps" \
      2>&1 | tee "$D/kernel_gpu_tests.log"
    if [ "${PIPESTATUS[0]}" -eq 0 ]; then
      STEPS=compiled COMPILED_BATCH=1,8,32 bash bench/eval_speed.sh "$D/eval" $(( $(left) - 10 ))
    else
      echo "the GPU tests failed: no eval"
    fi ;;
  2)
    . bench/device_env.sh
    timeout $(( $(left) - 10 )) python3 bench/profile_decode.py --compile --fuse --batch 1,8 --glu-epilogue both \
      --out "$D/decode_profile_glu.json" 2>&1 | tee "$D/decode_profile_glu.log" ;;
  3)
    EXTRA=--quantize-lm-head STEPS=compiled COMPILED_BATCH=1,8,32 bash bench/eval_speed.sh "$D/eval" $(( TOTAL - 10 )) ;;
  4)
    . bench/device_env.sh
    export QUANTKIT_GLU_WS=1
    timeout 330 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py -k "gated_pair" 2>&1 \
      | tee "$D/kernel_gpu_tests.log"
    if [ "${PIPESTATUS[0]}" -eq 0 ]; then
      STEPS=compiled COMPILED_BATCH=1,8,32 bash bench/eval_speed.sh "$D/eval" $(( $(left) - 10 ))
    else
      echo "the GPU tests failed: no eval"
    fi ;;
esac
tar -C "$OUT" -czf "$D.tgz" "glu$STEP" && rm -rf "$D"
echo "== glu $STEP done ($(left) s left)"
