#!/usr/bin/env bash
# The next device call for docs/kernel.md item 63 (written in session 50, not yet run): blocks of 8 warps at one token
# tile (the default from session 50) against blocks of 4 (QUANTKIT_STREAM_WK_WARPS=4) on one machine: the build and
# self-check, the compiled eval g128 at batches 1 and 8 with each, then with any time left the four kernels a layer
# chained at M = 1 and 8 (the default, the --wk8 variants and wk4_all). One archive, OUT_DIR/wk8_ab.tgz:
#     bash bench/results/wk8_ab_round.sh OUT_DIR [SECONDS]
set -u
OUT=${1:?usage: wk8_ab_round.sh OUT_DIR [SECONDS]}
TOTAL=${2:-585}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/wk8_ab"
mkdir -p "$D"
. bench/device_env.sh
unset QUANTKIT_STREAM_WK_WARPS
eval_ab() {  # eval_ab NAME SECONDS [ENV=VALUE ...]: compiled g128 eval at batches 1 and 8 (its build and self-check first)
  local name=$1 limit=$2; shift 2
  [ "$limit" -gt 120 ] || { echo "== $name skipped ($limit s left)"; return; }
  env "$@" STEPS=compiled COMPILED_BATCH=1,8 bash bench/eval_speed.sh "$D/$name" "$limit" 2>&1 \
    | grep -v "quantizing" | tail -14
}
# the first eval builds the extension (80-200 s), the second finds it cached: the first gets half the time and 80 s
# more, the second the rest; the chain only runs if both ended early (a deadline of 585: about 330 + 250 s)
eval_ab eval_wk8 $(( ($(left) + 80) / 2 ))
eval_ab eval_wk4 $(( $(left) - 5 )) QUANTKIT_STREAM_WK_WARPS=4
[ "$(left)" -gt 60 ] && timeout $(( $(left) - 5 )) python3 bench/chain_bench.py --ms 1,8 --no-sweep --wk8 --reps 10 \
  --out "$D/chain.json" 2>&1 | grep -v "^layers" | tail -60 | tee "$D/chain.log"
tar -C "$OUT" -czf "$D.tgz" wk8_ab && rm -rf "$D"
echo "== wk8 a/b done ($(left) s left)"
