#!/usr/bin/env bash
# docs/kernel.md item 65: the fold (QUANTKIT_NORM_FOLD=1) with o_proj writing the stream's sums of squares by 16
# features and gate/up adding up its token's row of them (ops.Fold.ss, csrc QkSumSq), and, from session 53, down's
# for the next layer's q/k/v (QUANTKIT_NORM_FOLD_SS_DOWN=0 turns that part off, QUANTKIT_NORM_FOLD_SS=0 both).
# Calls on one machine, one archive each, OUT_DIR/fold_ss<STEP>.tgz:
#     bash bench/results/fold_ss_round.sh OUT_DIR 1 [SECONDS]   build and self-check (FOLD_CASE with ss), the fold's
#                                                              GPU tests, then the compiled eval g128 at batch 1 with
#                                                              the fold (and both sums), then without the fold (the
#                                                              default); session 53 ran this on an H200 (aaae41c)
#     bash bench/results/fold_ss_round.sh OUT_DIR 2 [SECONDS]   the same eval with the fold and o_proj's sums only
#                                                              (QUANTKIT_NORM_FOLD_SS_DOWN=0), then with no sums
#     bash bench/results/fold_ss_round.sh OUT_DIR 3 [SECONDS]   the batch-1 step profiled with the fold and both sums
# Session 54 ran steps 1 and 2 on one H100 (0d70d44; step 1's tests and fold eval cut off after the fresh build, so the
# fold with both sums ran in a call of its own on the same machine, with QUANTKIT_NORM_FOLD=1 and the eval_b1 line's
# command); step 3 was not run: the fold was slower in every form.
set -u
OUT=${1:?usage: fold_ss_round.sh OUT_DIR STEP [SECONDS]}
STEP=${2:?usage: fold_ss_round.sh OUT_DIR STEP [SECONDS]}
TOTAL=${3:-585}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/fold_ss$STEP"
mkdir -p "$D"
. bench/device_env.sh
unset QUANTKIT_NORM_FOLD QUANTKIT_NORM_FOLD_SS QUANTKIT_NORM_FOLD_SS_DOWN QUANTKIT_STREAM_WK_WARPS
eval_b1() {  # eval_b1 NAME SECONDS (the environment says the fold)
  STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh "$D/eval_$1" "$2" 2>&1 | grep -v "quantizing" | tail -9
}
case $STEP in
  1)
    timeout 300 python3 -c "
import logging, sys; logging.basicConfig(level=logging.INFO)
from quantkit.kernels import kernel_available, self_check
ok, why = kernel_available(); print('kernel_available', ok, why)
sys.exit(1) if not ok else self_check()" 2>&1 | tail -4 | tee "$D/build.log"
    timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py tests/test_eval.py \
      -k "fold or eight_warps or bit_for_bit" 2>&1 | tail -6 | tee "$D/tests.log"
    QUANTKIT_NORM_FOLD=1 eval_b1 fold_ss $(( ($(left) - 10) / 2 ))
    eval_b1 nofold $(( $(left) - 8 )) ;;
  2)
    QUANTKIT_NORM_FOLD=1 QUANTKIT_NORM_FOLD_SS_DOWN=0 eval_b1 fold_ss_mlp $(( ($(left) - 10) / 2 ))
    QUANTKIT_NORM_FOLD=1 QUANTKIT_NORM_FOLD_SS=0 eval_b1 fold_noss $(( $(left) - 8 )) ;;
  3)
    QUANTKIT_NORM_FOLD=1 timeout $(( $(left) - 8 )) python3 bench/profile_decode.py --batch 1 --compile --pdl on \
      --fuse --out "$D/decode_profile_fold_ss.json" 2>&1 | grep "^quantized\|^baseline" | tee "$D/profile.log" ;;
esac
tar -C "$OUT" -czf "$D.tgz" "fold_ss$STEP" && rm -rf "$D"
echo "== fold_ss$STEP done ($(left) s left)"
