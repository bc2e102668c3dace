#!/usr/bin/env bash
# Session 38's device calls (nvidia-h100-x1) for the split-KV attention's in-kernel combine (COMBINE "last",
# docs/kernel.md item 49), using bench/results/combine_round.sh:
#   call 1: CALL=1 bash bench/results/h100_combine_round.sh OUT_DIR
#     its GPU check (PHASE=check, without the attention bench unless ATTENTION=1, OUT_DIR/check/combine.tgz); then,
#     only if the check passed,
#     the compiled eval (group 128, batch 1 / 8 / 32) with COMBINE=last (OUT_DIR/last/combine.tgz), which builds the
#     W4A16 extension into the machine's kernel cache first;
#   calls 2 and 3, on the same warm machine: CALL=2 [COMBINE=kernel|last] [QUANTKIT_COMBO_KERNELS=1] bash
#     bench/results/h100_combine_round.sh OUT_DIR
#     the same eval with the default combining kernel (COMBINE=kernel, OUT_DIR/kernel/combine.tgz), to compare
#     within one machine (ratios move ~3% between H100s, item 48); then with inductor's combo kernels in both models'
#     compiled steps (QUANTKIT_COMBO_KERNELS=1, OUT_DIR/<COMBINE>_combo/combine.tgz).
# Every eval here picks its greedy token in two stages (throughput.greedy_token, new in session 38).
set -u
OUT=${1:?usage: CALL=1|2 h100_combine_round.sh OUT_DIR}
T0=$(date +%s)
left() { echo $(( 585 - ($(date +%s) - T0) )); }
R=bench/results/combine_round.sh
if [ "${CALL:-1}" = 1 ]; then
  mkdir -p "$OUT/check" "$OUT/last"
  PHASE=check ATTENTION=${ATTENTION:-0} bash $R "$OUT/check" 230 2>&1 | tee "$OUT/check.log"
  if grep -q "== tests: rc 0" "$OUT/check.log"; then
    PHASE=eval COMBINE=last bash $R "$OUT/last" $(( $(left) - 5 ))
  else
    echo "== the GPU check failed: no eval with COMBINE=last"
  fi
else
  D="$OUT/${COMBINE:-kernel}${QUANTKIT_COMBO_KERNELS:+_combo}"
  mkdir -p "$D"
  PHASE=eval COMBINE=${COMBINE:-kernel} bash $R "$D" $(( $(left) - 5 ))
fi
echo "== call ${CALL:-1} done ($(left) s left)"
