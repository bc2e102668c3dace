#!/usr/bin/env bash
# Session 38's device call for the split-KV attention's in-kernel combine (COMBINE "last", docs/kernel.md item 49)
# and inductor's combo kernels (QUANTKIT_COMBO_KERNELS=1, item 50), using bench/results/combine_round.sh. Every eval
# here is the compiled one, group 128, at batch 1 and 8 (COMPILED_BATCH; batch 32 runs one KV range a pair and no
# combining kernel), and picks its greedy token in two stages (throughput.greedy_token, new in session 38).
#     [RUNS="kernel last_combo last"] [TOTAL=585] bash bench/results/h100_combine_round.sh OUT_DIR
# First the GPU check (PHASE=check: the split-KV kernel against SDPA both ways and the greedy token, TESTS selecting
# from tests/test_eval_gpu.py; no attention bench unless ATTENTION=1; OUT_DIR/check/combine.tgz); then, only if it
# passed, while TOTAL seconds last, an eval for each of
# RUNS in turn while 150 s are left, each given at most 175 s: COMBINE=kernel|last, "_combo" with
# QUANTKIT_COMBO_KERNELS=1 (OUT_DIR/<run>/combine.tgz), compared within one machine (ratios move ~3% between H100s,
# item 48). Written as one call because device starts were scarce this session (nine starts refused before it).
set -u
OUT=${1:?usage: [RUNS=...] h100_combine_round.sh OUT_DIR}
T0=$(date +%s)
TOTAL=${TOTAL:-585}
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
R=bench/results/combine_round.sh
export COMPILED_BATCH=${COMPILED_BATCH:-1,8}
mkdir -p "$OUT/check"
PHASE=check ATTENTION=${ATTENTION:-0} TESTS="${TESTS:-matches_sdpa or greedy}" bash $R "$OUT/check" 230 2>&1 | tee "$OUT/check.log"
if ! grep -q "== tests: rc 0" "$OUT/check.log"; then
  echo "== the GPU check failed: no evals"
  exit 1
fi
for run in ${RUNS:-kernel last_combo last}; do
  [ "$(left)" -lt 150 ] && { echo "== $run: skipped ($(left) s left)"; continue; }
  mkdir -p "$OUT/$run"
  combo=; [ "${run#*_}" = combo ] && combo=1
  limit=$(( $(left) - 5 < 175 ? $(left) - 5 : 175 ))
  PHASE=eval COMBINE=${run%_combo} QUANTKIT_COMBO_KERNELS=${combo:-0} bash $R "$OUT/$run" $limit
  tar -xzOf "$OUT/$run/combine.tgz" --wildcards '*_compiled.log' 2>/dev/null | grep -aE "^(batch|[0-9]+ ) "
done
echo "== done ($(left) s left)"
