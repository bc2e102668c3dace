#!/usr/bin/env bash
# Session 38's device calls (nvidia-h100-x1) for the split-KV attention's in-kernel combine (COMBINE "last",
# docs/kernel.md item 49), using bench/results/combine_round.sh:
#   call 1: CALL=1 bash bench/results/h100_combine_round.sh OUT_DIR
#     its GPU check and the attention alone (PHASE=check, OUT_DIR/check/combine.tgz); then, only if the check passed,
#     the compiled eval (group 128, batch 1 / 8 / 32) with COMBINE=last (OUT_DIR/last/combine.tgz), which builds the
#     W4A16 extension into the machine's kernel cache first;
#   call 2, on the same warm machine: CALL=2 bash bench/results/h100_combine_round.sh OUT_DIR
#     the same eval with the default combining kernel (COMBINE=kernel, OUT_DIR/kernel/combine.tgz), to compare
#     within one machine (ratios move ~3% between H100s, item 48).
set -u
OUT=${1:?usage: CALL=1|2 h100_combine_round.sh OUT_DIR}
T0=$(date +%s)
left() { echo $(( 585 - ($(date +%s) - T0) )); }
R=bench/results/combine_round.sh
if [ "${CALL:-1}" = 1 ]; then
  mkdir -p "$OUT/check" "$OUT/last"
  PHASE=check bash $R "$OUT/check" 170 2>&1 | tee "$OUT/check.log"
  if grep -q "== tests: rc 0" "$OUT/check.log"; then
    PHASE=eval COMBINE=last bash $R "$OUT/last" $(( $(left) - 5 ))
  else
    echo "== the GPU check failed: no eval with COMBINE=last"
  fi
else
  mkdir -p "$OUT/kernel"
  PHASE=eval COMBINE=kernel bash $R "$OUT/kernel" $(( $(left) - 5 ))
fi
echo "== call ${CALL:-1} done ($(left) s left)"
