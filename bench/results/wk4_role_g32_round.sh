#!/usr/bin/env bash
# The next device call for docs/kernel.md item 63 (written in session 51, not yet run): the build and self-check, the
# four kernels a layer chained at M = 1 and 8 with each role alone in blocks of 4 warps, the others as dispatched
# (chain_bench --wk8's wk4_ROLE: is gate/up, unsplit either way, faster in blocks of 4, as 14336x4096 was alone in
# session 51's kernel table?), then the compiled eval at group 32, batches 1, 8 and 32, with the blocks of 8 (the
# README's group-32 rows are session 46's, blocks of 4). One archive, OUT_DIR/wk4_role_g32.tgz:
#     bash bench/results/wk4_role_g32_round.sh OUT_DIR [SECONDS]
set -u
OUT=${1:?usage: wk4_role_g32_round.sh OUT_DIR [SECONDS]}
TOTAL=${2:-585}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/wk4_role_g32"
mkdir -p "$D"
. bench/device_env.sh
unset QUANTKIT_STREAM_WK_WARPS
# chain_bench builds the extension (80-200 s) and self-checks before its chains (about 60 s at two M)
timeout $(( $(left) - 300 > 100 ? $(left) - 300 : 100 )) python3 bench/chain_bench.py --ms 1,8 --no-sweep --wk8 \
  --reps 10 --out "$D/chain.json" 2>&1 | grep -v "^layers" | tail -60 | tee "$D/chain.log"
COMPILED_GROUP=32 STEPS=compiled COMPILED_BATCH=1,8,32 bash bench/eval_speed.sh "$D/eval_g32" $(( $(left) - 5 )) 2>&1 \
  | grep -v "quantizing" | tail -16
tar -C "$OUT" -czf "$D.tgz" wk4_role_g32 && rm -rf "$D"
echo "== wk4_role_g32 done ($(left) s left)"
