#!/usr/bin/env bash
# Session 48: the decode kernel in blocks of 8 warps sharing a tile at one token tile (ops.stream_wk_warps, mma_splits
# counting such a block as two), turned on by QUANTKIT_STREAM_WK_WARPS=8 for every step below but the eval named wk4
# (the default's blocks of 4). As run on e077d7a (step 1, 420 s), blocks of 8 were the default there and the
# self-check stopped (bench/results/wk8_default_h100_e077d7a_selfcheck.log). One archive a step:
#     bash bench/results/wk8_default_round.sh OUT_DIR 1 [SECONDS]   build and self-check; compiled eval g128 at batch 1;
#                                                                 the kernels' GPU tests of the default paths at M <= 8
#                                                                 and of the blocks of 8; with the time left the eval
#                                                                 again with the blocks of 4, then the four
#                                                                 kernels a layer chained at M = 1 and 8 (default, the
#                                                                 --wk8 variants)
#     bash bench/results/wk8_default_round.sh OUT_DIR 2 [SECONDS]   compiled eval g128 at batch 8 with blocks of 8, then
#                                                                 issue 4's kernel benchmark at M = 1 and 8 (group 128)
#                                                                 with the time left
set -u
OUT=${1:?usage: wk8_default_round.sh OUT_DIR STEP [SECONDS]}
STEP=${2:?usage: wk8_default_round.sh OUT_DIR STEP [SECONDS]}
TOTAL=${3:-585}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/wk8_$STEP"
mkdir -p "$D"
. bench/device_env.sh
export QUANTKIT_STREAM_WK_WARPS=8
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$D/nvidia-smi.csv"
eval_b() {  # eval_b BATCH NAME SECONDS [ENV=VALUE ...]: compiled g128 eval at BATCH, within SECONDS
  local batch=$1 name=$2 limit=$3; shift 3
  [ "$limit" -gt 90 ] || { echo "== $name skipped ($limit s left)"; return; }
  env "$@" STEPS=compiled COMPILED_BATCH=$batch bash bench/eval_speed.sh "$D/$name" "$limit" 2>&1 \
    | grep -v "quantizing" | tail -12
}
case $STEP in
  1)
    timeout 250 python3 -c "
import logging, sys; logging.basicConfig(level=logging.INFO)
from quantkit.kernels import kernel_available, self_check
ok, why = kernel_available(); print('kernel_available', ok, why)
sys.exit(1) if not ok else self_check()" 2>&1 | tee "$D/build.log"
    eval_b 1 eval_wk8_b1 $(( $(left) - 60 < 200 ? $(left) - 60 : 200 ))
    timeout $(( $(left) - 5 < 70 ? $(left) - 5 : 70 )) python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py \
      -k "eight_warps or sharing_a_tile or splits_and_tiles or gated_pair_epilogue or fold_in or \
programmatic_launch_chain or match_reference" 2>&1 | tail -15 | tee "$D/tests.log"
    eval_b 1 eval_wk4_b1 $(( $(left) - 5 )) QUANTKIT_STREAM_WK_WARPS=4  # (4: the default before session 50)
    [ "$(left)" -gt 60 ] && timeout $(( $(left) - 5 )) python3 bench/chain_bench.py --ms 1,8 --no-sweep --wk8 --reps 10 \
      --out "$D/chain.json" 2>&1 | grep -v "^layers" | tail -60 | tee "$D/chain.log" ;;
  2)
    eval_b 8 eval_wk8_b8 $(( $(left) - 60 ))
    [ "$(left)" -gt 60 ] && timeout $(( $(left) - 5 )) python3 bench/kernel_bench.py --reps 20 --ms 1,8 --groups 128 \
      --out "$D/kernel.json" 2>&1 | tail -40 | tee "$D/kernel.log" ;;
esac
tar -C "$OUT" -czf "$D.tgz" "wk8_$STEP" && rm -rf "$D"
echo "== wk8 step $STEP done ($(left) s left)"
