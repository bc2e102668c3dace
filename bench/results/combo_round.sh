#!/usr/bin/env bash
# For the next device calls (written in session 38, not yet run): the compiled eval, group 128, with the greedy token
# in two stages (new in session 38, docs/kernel.md item 50), with and without inductor's combo kernels
# (QUANTKIT_COMBO_KERNELS=1), on one warm machine, since ratios move ~3% between H100s (item 48):
#     COMBO=0 bash bench/results/combo_round.sh OUT_DIR [SECONDS]   (the default step; OUT_DIR/combo0.tgz)
#     COMBO=1 bash bench/results/combo_round.sh OUT_DIR [SECONDS]   (combo kernels; OUT_DIR/combo1.tgz)
# Each at batch 1 / 8 / 32 (COMPILED_BATCH) within SECONDS (default 585). Session 38 measured what one takes: the
# bf16 model's compile and first throughput run at batch 8 alone took 59-61 s; the run at batch 1 / 8 / 32 took
# 225-270 s in session 37 after a build of 50-85 s on a fresh machine, so the first call of a machine builds too.
set -u
OUT=${1:?usage: COMBO=0|1 combo_round.sh OUT_DIR [SECONDS]}
TOTAL=${2:-585}
D="$OUT/combo${COMBO:-0}"
mkdir -p "$D"
QUANTKIT_COMBO_KERNELS=${COMBO:-0} STEPS=compiled COMPILED_BATCH=${COMPILED_BATCH:-1,8,32} \
  bash bench/eval_speed.sh "$D" $(( TOTAL - 10 ))
tar -C "$OUT" -czf "$D.tgz" "combo${COMBO:-0}" && rm -rf "$D"
echo "== combo ${COMBO:-0} done"
