#!/usr/bin/env bash
# Session 43: compiled eval g128 at batch 1 with the default lm_head (bf16) and with --quantize-lm-head, on one machine
# (ratios compare only within one), outputs in one archive:   bash bench/results/lm_head_round.sh OUT_DIR [SECONDS]
set -u
OUT=${1:?usage: lm_head_round.sh OUT_DIR [SECONDS]}
TOTAL=${2:-510}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/lmh"
mkdir -p "$D"
STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh "$D/default" $(( $(left) * 11 / 20 ))
EXTRA=--quantize-lm-head STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh "$D/lm_head_4bit" $(( $(left) - 15 ))
tar -C "$OUT" -czf "$D.tgz" lmh && rm -rf "$D"
echo "== lm_head round done ($(left) s left)"
