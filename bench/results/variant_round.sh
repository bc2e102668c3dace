#!/usr/bin/env bash
# One compiled eval (group 128 unless COMPILED_GROUP says otherwise, batch 1 / 8 / 32) under a name, its outputs
# packed into one archive (the device tool returns at most 8 files a call). The variant is whatever the environment
# sets: QUANTKIT_* options, EXTRA (options added to the eval, e.g. EXTRA=--quantize-lm-head).
#     [VARS...] bash bench/results/variant_round.sh OUT_DIR NAME [SECONDS]     -> OUT_DIR/NAME.tgz
# Several on one warm machine compare within that machine (ratios move ~3% between H100s, docs/kernel.md item 48).
set -u
OUT=${1:?usage: variant_round.sh OUT_DIR NAME [SECONDS]}
NAME=${2:?usage: variant_round.sh OUT_DIR NAME [SECONDS]}
TOTAL=${3:-585}
mkdir -p "$OUT/$NAME"
STEPS=compiled COMPILED_BATCH=${COMPILED_BATCH:-1,8,32} bash bench/eval_speed.sh "$OUT/$NAME" $(( TOTAL - 10 ))
tar -C "$OUT" -czf "$OUT/$NAME.tgz" "$NAME" && rm -rf "${OUT:?}/$NAME"
echo "== $NAME done"
