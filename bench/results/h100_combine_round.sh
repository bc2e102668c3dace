#!/usr/bin/env bash
# Session 38's device calls for the split-KV attention's in-kernel combine (COMBINE "last", docs/kernel.md item 49)
# and inductor's combo kernels (QUANTKIT_COMBO_KERNELS=1, item 50), using bench/results/combine_round.sh. Every eval
# here is the compiled one, group 128, at batch 1 and 8 (COMPILED_BATCH; batch 32 runs one KV range a pair and no
# combining kernel), and picks its greedy token in two stages (throughput.greedy_token, new in session 38).
#   call 1: CALL=1 bash bench/results/h100_combine_round.sh OUT_DIR
#     the GPU check (PHASE=check, without the attention bench unless ATTENTION=1, OUT_DIR/check/combine.tgz); then,
#     only if the check passed, the eval with COMBINE=last (OUT_DIR/last/combine.tgz). The check's first test builds
#     the W4A16 extension into the machine's kernel cache.
#   call 2, on the same warm machine: CALL=2 RUNS="kernel last_combo" bash bench/results/h100_combine_round.sh OUT_DIR
#     an eval for each of RUNS, one after the other, each COMBINE=kernel|last, "_combo" with QUANTKIT_COMBO_KERNELS=1
#     (OUT_DIR/<run>/combine.tgz), compared within one machine (ratios move ~3% between H100s, item 48).
set -u
OUT=${1:?usage: CALL=1|2 [RUNS=...] h100_combine_round.sh OUT_DIR}
T0=$(date +%s)
left() { echo $(( 585 - ($(date +%s) - T0) )); }
R=bench/results/combine_round.sh
export COMPILED_BATCH=${COMPILED_BATCH:-1,8}
if [ "${CALL:-1}" = 1 ]; then
  mkdir -p "$OUT/check" "$OUT/last"
  PHASE=check ATTENTION=${ATTENTION:-0} bash $R "$OUT/check" 230 2>&1 | tee "$OUT/check.log"
  if grep -q "== tests: rc 0" "$OUT/check.log"; then
    PHASE=eval COMBINE=last bash $R "$OUT/last" $(( $(left) - 5 ))
  else
    echo "== the GPU check failed: no eval with COMBINE=last"
  fi
else
  set -- ${RUNS:-kernel}
  while [ $# -gt 0 ]; do
    run=$1; shift
    mkdir -p "$OUT/$run"
    combo=; [ "${run#*_}" = combo ] && combo=1
    share=$(( ($(left) - 5) / ($# + 1) ))
    PHASE=eval COMBINE=${run%_combo} QUANTKIT_COMBO_KERNELS=${combo:-0} bash $R "$OUT/$run" $share
  done
fi
echo "== call ${CALL:-1} done ($(left) s left)"
