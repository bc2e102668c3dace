#!/usr/bin/env bash
# Session 44: a decoder layer's residual adds and RMSNorms folded into the 4-bit decode kernel (ops.Fold, fuse's
# FoldedDecoderLayer) and the split-KV attention's ranges combined by the last range to finish (decode_attention's
# FUSED_COMBINE); outputs in one archive a step:
#     bash bench/results/fold_round.sh OUT_DIR 1 [SECONDS]   build this tree and, beside it, the one of .base (the
#                                                            commit before: git archive 712cc89 quantkit csrc bench |
#                                                            tar -x -C .base); the kernel GPU tests, the split-KV ones;
#                                                            the step's four kernels chained (no fold) with each
#                                                            build; the attention alone with either combine
#     bash bench/results/fold_round.sh OUT_DIR 2 [SECONDS]   compiled eval g128 at batch 1: default, without the fold
#                                                            (QUANTKIT_NORM_FOLD=0), without the fused combine
#                                                            (QUANTKIT_SPLIT_KV_FUSED_COMBINE=0); the GPU eval tests
#     bash bench/results/fold_round.sh OUT_DIR 4 [SECONDS]   after the fold became opt-in and its own kernel instances
#                                                            (the others' bf16 SASS that of .base): build, the fold's
#                                                            and the decode kernel's GPU tests, the chained kernels
#     bash bench/results/fold_round.sh OUT_DIR 3 [SECONDS]   compiled eval g128 at batch 1, 8, 32 (the default); the
#                                                            compiled-step GPU tests of the split-KV kernel if time is
#                                                            left
set -u
OUT=${1:?usage: fold_round.sh OUT_DIR STEP [SECONDS]}
STEP=${2:?usage: fold_round.sh OUT_DIR STEP [SECONDS]}
TOTAL=${3:-585}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/fold$STEP"
mkdir -p "$D"
. bench/device_env.sh
BUILD="
import logging, sys; logging.basicConfig(level=logging.INFO)
from quantkit.kernels import kernel_available, self_check
ok, why = kernel_available(); print('kernel_available', ok, why)
sys.exit(1) if not ok else self_check()"
case $STEP in
  1)
    (cd .base && PYTHONPATH="$PWD:/tmp/site" timeout 300 python3 -c "$BUILD" > "$D/build_base.log" 2>&1) &
    timeout 300 python3 -c "$BUILD" 2>&1 | tee "$D/build.log"
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py 2>&1 | tail -15 | tee "$D/tests_kernels.log"
    timeout 120 python3 -m pytest -q -rs -p no:cacheprovider tests/test_eval_gpu.py \
      -k "split_kv_decode_matches or o_proj_programmatically" 2>&1 | tail -8 | tee "$D/tests_split_kv.log"
    timeout 90 python3 bench/chain_bench.py --ms 1,8 --no-sweep --out "$D/chain.json" 2>&1 | tail -12 | tee "$D/chain.log"
    wait
    tail -2 "$D/build_base.log"
    (cd .base && PYTHONPATH="$PWD:/tmp/site" timeout 90 python3 bench/chain_bench.py --ms 1,8 --no-sweep \
      --out "$D/chain_base.json") 2>&1 | tail -12 | tee "$D/chain_base.log"
    timeout $(( $(left) - 10 )) python3 bench/decode_attention_bench.py --batch 1,8,32 --o-proj \
      --out "$D/attention.json" 2>&1 | tail -30 | tee "$D/attention.log" ;;
  2)
    STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh "$D/eval_default" $(( ($(left) - 30) * 2 / 5 ))
    QUANTKIT_NORM_FOLD=0 STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh "$D/eval_nofold" \
      $(( ($(left) - 30) / 2 ))
    QUANTKIT_SPLIT_KV_FUSED_COMBINE=0 STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh "$D/eval_unfused" \
      $(( $(left) - 20 )) ;;
  3)
    STEPS=compiled COMPILED_BATCH=1,8,32 bash bench/eval_speed.sh "$D/eval" $(( $(left) - 120 ))
    if [ "$(left)" -gt 90 ]; then
      timeout $(( $(left) - 10 )) python3 -m pytest -q -rs -p no:cacheprovider tests/test_eval_gpu.py \
        -k "programmatic_launches_through_the_compiled or split_kv_decode_in_the_compiled" 2>&1 | tail -8 \
        | tee "$D/tests_compiled.log"
    fi ;;
  4)
    timeout 240 python3 -c "$BUILD" 2>&1 | tee "$D/build.log"
    timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py \
      -k "fold or cluster or gated_pair_epilogue or programmatic or splits_and_tiles" 2>&1 | tail -4 | tee "$D/tests_fold.log"
    timeout $(( $(left) - 5 )) python3 bench/chain_bench.py --ms 1,8 --no-sweep --out "$D/chain.json" 2>&1 | tail -8 \
      | tee "$D/chain.log" ;;
esac
tar -C "$OUT" -czf "$D.tgz" "fold$STEP" && rm -rf "$D"
echo "== fold $STEP done ($(left) s left)"
