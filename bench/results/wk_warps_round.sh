#!/usr/bin/env bash
# Session 47: the decode kernel's blocks with 8 warps sharing a tile instead of 4 (csrc QK_STREAM_WK_WARPS=8 through
# QUANTKIT_KERNEL_DEFINES; unset, the default build, byte for byte the same code as before): the same warps in flight
# with half the split-K parts, or none. The step's four kernels a layer chained at M = 1 (chain_bench): with the macro,
# the default plan, every role alone and each role in 1 or 2 splits; then the default build's chain on the same machine.
#     bash bench/results/wk_warps_round.sh OUT_DIR [SECONDS]
set -u
OUT=${1:?usage: wk_warps_round.sh OUT_DIR [SECONDS]}
TOTAL=${2:-500}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/wk"
mkdir -p "$D"
. bench/device_env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$D/nvidia-smi.csv"
QUANTKIT_KERNEL_DEFINES="QK_STREAM_WK_WARPS=8" timeout $(( $(left) * 11 / 20 )) python3 bench/chain_bench.py --ms 1 \
  --alone --only '_s(1|2)_' --out "$D/chain_wk8.json" 2>&1 | grep -v "^layers" | tail -40 | tee "$D/chain_wk8.log"
timeout $(( $(left) - 5 )) python3 bench/chain_bench.py --ms 1 --no-sweep --alone --out "$D/chain_default.json" 2>&1 \
  | grep -v "^layers" | tail -40 | tee "$D/chain_default.log"
tar -C "$OUT" -czf "$D.tgz" wk && rm -rf "$D"
echo "== wk warps done ($(left) s left)"
