#!/usr/bin/env bash
# The compiled eval, group 128, with the greedy token in two stages (session 38, docs/kernel.md item 50), with and
# without inductor's combo kernels (QUANTKIT_COMBO_KERNELS=1 / 0), on one warm machine, since ratios move ~3% between
# H100s (item 48):
#     COMBO=0 bash bench/results/combo_round.sh OUT_DIR [SECONDS]   (combo kernels off; OUT_DIR/combo0.tgz)
#     COMBO=1 bash bench/results/combo_round.sh OUT_DIR [SECONDS]   (combo kernels on; OUT_DIR/combo1.tgz)
# Each at batch 1 / 8 / 32 (COMPILED_BATCH) within SECONDS (default 585).
# How it went (session 39, 546da8d, one NVIDIA H100 80GB HBM3, docs/kernel.md item 51), six calls on one machine:
#   1. COMBO=0 bash bench/results/combo_round.sh $OUT 585        451 s (build 99 s)  -> *_546da8d_h100.*
#   2. COMBO=1 bash bench/results/combo_round.sh $OUT 500        333 s               -> *_546da8d_h100_combo.*
#   3. QUANTKIT_COMBO_KERNELS=1 python3 bench/profile_decode.py --compile --fuse --batch 1,8 --out ...
#                                                                132 s               -> decode_profile_h100_combo_546da8d.*
#   4. QUANTKIT_COMBO_KERNELS=1 STEPS=compiled COMPILED_GROUP=32 COMPILED_BATCH=1,8,32 bash bench/eval_speed.sh $OUT/g32 470
#                                                                168 s               -> eval_llama-3-8b_g32_compiled_546da8d_h100_combo.*
#   5. COMBO=1 ... $OUT/r2 265, then COMBO=0 ... $OUT/r2 265    337 s               -> *_546da8d_h100_combo_2.*, *_546da8d_h100_2.*
#   then python3 bench/greedy_bench.py                             5 s               -> greedy_h100_546da8d.log
# A machine's inductor cache makes a second compiled eval take about 170 s instead of 330.
set -u
OUT=${1:?usage: COMBO=0|1 combo_round.sh OUT_DIR [SECONDS]}
TOTAL=${2:-585}
D="$OUT/combo${COMBO:-0}"
mkdir -p "$D"
QUANTKIT_COMBO_KERNELS=${COMBO:-0} STEPS=compiled COMPILED_BATCH=${COMPILED_BATCH:-1,8,32} \
  bash bench/eval_speed.sh "$D" $(( TOTAL - 10 ))
tar -C "$OUT" -czf "$D.tgz" "combo${COMBO:-0}" && rm -rf "$D"
echo "== combo ${COMBO:-0} done"
