#!/usr/bin/env bash
# Session 45: a decode step's gated MLP in one launch (ops.w4a16_mlp, csrc qk_mma_mlp; on by default,
# QUANTKIT_FUSED_MLP=0 for the two launches); outputs in one archive a step:
#     bash bench/results/mlp_round.sh OUT_DIR 1 [SECONDS]   build and self-check (MLP_CASE among its cases); the kernels'
#                                                           GPU tests of the MLP, the gated pair, the programmatic
#                                                           launches, the splits; the step's four kernels a layer chained,
#                                                           the MLP in two launches and in one (chain_bench); compiled
#                                                           eval g128 at batch 1 with the time left
#     bash bench/results/mlp_round.sh OUT_DIR 2 [SECONDS]   compiled eval g128 at batch 1 with the two launches
#                                                           (QUANTKIT_FUSED_MLP=0), then at batch 1, 8, 32 (the default)
#     bash bench/results/mlp_round.sh OUT_DIR 3 [SECONDS]   after step 1 (the one launch slower: down read mid through
#                                                           the L2 only, every lane polling): build, the MLP's GPU tests,
#                                                           the chain again, then compiled eval g128 at batch 1, 8, 32
#                                                           with the two launches (QUANTKIT_FUSED_MLP=0; not with
#                                                           CHAIN_ONLY=1)
#     bash bench/results/mlp_round.sh OUT_DIR 4 [SECONDS]   step 3 without its eval, then compiled eval g128 at batch 1
#                                                           with the MLP the chain found faster at M = 1
set -u
OUT=${1:?usage: mlp_round.sh OUT_DIR STEP [SECONDS]}
STEP=${2:?usage: mlp_round.sh OUT_DIR STEP [SECONDS]}
TOTAL=${3:-585}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/mlp$STEP"
mkdir -p "$D"
. bench/device_env.sh
case $STEP in
  1)
    timeout 300 python3 -c "
import logging, sys; logging.basicConfig(level=logging.INFO)
from quantkit.kernels import kernel_available, self_check
ok, why = kernel_available(); print('kernel_available', ok, why)
sys.exit(1) if not ok else self_check()" 2>&1 | tee "$D/build.log"
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py \
      -k "mlp or gated_pair_epilogue or programmatic or splits_and_tiles or cluster" 2>&1 | tail -8 | tee "$D/tests.log"
    timeout 120 python3 bench/chain_bench.py --ms 1,8 --no-sweep --out "$D/chain.json" 2>&1 | tail -12 | tee "$D/chain.log"
    if [ "$(left)" -gt 200 ]; then
      STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh "$D/eval_b1" $(( $(left) - 10 ))
    fi ;;
  2)
    QUANTKIT_FUSED_MLP=0 STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh "$D/eval_b1_two" \
      $(( ($(left) - 20) * 2 / 5 ))
    STEPS=compiled COMPILED_BATCH=1,8,32 bash bench/eval_speed.sh "$D/eval" $(( $(left) - 10 )) ;;
  3)
    timeout 300 python3 -c "
import logging, sys; logging.basicConfig(level=logging.INFO)
from quantkit.kernels import kernel_available, self_check
ok, why = kernel_available(); print('kernel_available', ok, why)
sys.exit(1) if not ok else self_check()" 2>&1 | tee "$D/build.log"
    timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py -k "mlp" 2>&1 | tail -8 | tee "$D/tests.log"
    timeout 120 python3 bench/chain_bench.py --ms 1,8 --no-sweep --out "$D/chain.json" 2>&1 | tail -8 | tee "$D/chain.log"
    [ "${CHAIN_ONLY:-0}" = 1 ] || QUANTKIT_FUSED_MLP=0 STEPS=compiled COMPILED_BATCH=1,8,32 \
      bash bench/eval_speed.sh "$D/eval_two" $(( $(left) - 10 )) ;;
  4)  # step 3's build, tests and chain, then compiled eval g128 at batch 1 with whichever MLP the chain found faster
    CHAIN_ONLY=1 bash "$0" "$OUT" 3 $(( $(left) - 200 ))
    tar -C "$OUT" -xzf "$OUT/mlp3.tgz" && rm "$OUT/mlp3.tgz"
    FUSED=$(python3 -c "
import json; runs = json.load(open('$OUT/mlp3/chain.json'))['runs']; rows = [r['us_per_layer'] for r in runs if r['m'] == 1]
print(int(bool(rows) and rows[0].get('mlp_one_launch', {}).get('us', 1e9) < rows[0]['default']['us']))")
    # (as run in session 45 the line above had one parenthesis too many: FUSED came out empty, and the eval below ran
    # with QUANTKIT_FUSED_MLP='', the one launch, the default then; the two launches were measured after it, by hand:
    # QUANTKIT_FUSED_MLP=0 STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh $OUT/eval_two 240)
    echo "one-launch MLP faster in the chain at M = 1: $FUSED" | tee "$D/choice.log"
    QUANTKIT_FUSED_MLP=$FUSED STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh "$D/eval_b1" $(( $(left) - 10 ))
    mv "$OUT/mlp3" "$D/" ;;
esac
tar -C "$OUT" -czf "$D.tgz" "mlp$STEP" && rm -rf "$D"
echo "== mlp $STEP done ($(left) s left)"
