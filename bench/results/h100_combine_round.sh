#!/usr/bin/env bash
# Session 38's device call for the split-KV attention's in-kernel combine (COMBINE "last", docs/kernel.md item 49)
# and inductor's combo kernels (QUANTKIT_COMBO_KERNELS=1, item 50), using bench/results/combine_round.sh. Every eval
# here is the compiled one, group 128, at batch 1 and 8 (COMPILED_BATCH; batch 32 runs one KV range a pair and no
# combining kernel), and picks its greedy token in two stages (throughput.greedy_token, new in session 38).
#     [RUNS="kernel last_combo last"] [TOTAL=585] bash bench/results/h100_combine_round.sh OUT_DIR
# First the GPU check (PHASE=check: the split-KV kernel against SDPA both ways and the greedy token, TESTS selecting
# from tests/test_eval_gpu.py; no attention bench unless ATTENTION=1; OUT_DIR/check/combine.tgz); then, only if it
# passed, the W4A16 extension's build and self-check, then, while TOTAL seconds last, an eval for each of RUNS in turn
# while MIN s are left, each given at most CAP s: COMBINE=kernel|last, "_combo" with
# QUANTKIT_COMBO_KERNELS=1 (OUT_DIR/<run>/combine.tgz), compared within one machine (ratios move ~3% between H100s,
# item 48). Written as one call because device starts were scarce this session (nine starts refused before it).
# As run (4baab8f): first with the defaults and TOTAL=440: the check failed only on the greedy token's GPU test, whose
# module imported test_eval and with it gguf, which the GPU image lacks (now tests/greedy_check.py); then, on the warm
# machine, TESTS="matches_sdpa" RUNS="kernel last_combo last" COMPILED_BATCH=8 CAP=140 MIN=120 TOTAL=420: the check
# passed (combine_h100_check_4baab8f.log), both evals were cut at their 140 s after the bf16 model's run (its compile
# and run took 59-61 s; a batch-8 eval needs about 200 s), "last" was skipped. The last device seconds ran
# `python3 bench/decode_attention_bench.py --batch 8,1` (decode_attention_h100_4baab8f.*) and the timing of
# bench/greedy_bench.py (greedy_h100_4baab8f.log). COMBINE "last" was taken out after it (docs/kernel.md item 50):
# QUANTKIT_SPLIT_KV_COMBINE is no longer read.
set -u
OUT=${1:?usage: [RUNS=...] h100_combine_round.sh OUT_DIR}
T0=$(date +%s)
TOTAL=${TOTAL:-585}
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
R=bench/results/combine_round.sh
export COMPILED_BATCH=${COMPILED_BATCH:-1,8}
CAP=${CAP:-175} MIN=${MIN:-150}  # an eval's most and least seconds (batch 8 alone: CAP=140 MIN=120)
mkdir -p "$OUT/check"
PHASE=check ATTENTION=${ATTENTION:-0} TESTS="${TESTS:-matches_sdpa or greedy}" bash $R "$OUT/check" 230 2>&1 | tee "$OUT/check.log"
if ! grep -q "== tests: rc 0" "$OUT/check.log"; then
  echo "== the GPU check failed: no evals"
  exit 1
fi
. bench/device_env.sh > /dev/null
timeout 220 python3 -c "from quantkit.kernels import kernel_available, self_check; ok, why = kernel_available(); \
print('kernel_available', ok, why); ok and self_check()" 2>&1 | tail -n 3  # the build, before the evals' deadlines
for run in ${RUNS:-kernel last_combo last}; do
  [ "$(left)" -lt "$MIN" ] && { echo "== $run: skipped ($(left) s left)"; continue; }
  mkdir -p "$OUT/$run"
  combo=; [ "${run#*_}" = combo ] && combo=1
  limit=$(( $(left) - 5 < CAP ? $(left) - 5 : CAP ))
  PHASE=eval COMBINE=${run%_combo} QUANTKIT_COMBO_KERNELS=${combo:-0} bash $R "$OUT/$run" $limit
  tar -xzOf "$OUT/$run/combine.tgz" --wildcards '*_compiled.log' 2>/dev/null | grep -aE "^(batch|[0-9]+ ) "
done
echo "== done ($(left) s left)"
