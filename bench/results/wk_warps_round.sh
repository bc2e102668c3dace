#!/usr/bin/env bash
# Session 47: the decode kernel's blocks with 8 warps sharing a tile instead of 4 (w4a16_linear(wk_warps=8), csrc
# qk_mma_stream's WKW): the same warps in flight with half the split-K parts, or none. The step's four kernels a layer
# chained at M = 1 (chain_bench --wk8: the default, each role in 1 or 2 splits with 8 warps, all roles at once, each role
# alone both ways), then, with the time left, its GPU test. One archive:
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
timeout $(( $(left) - 25 )) python3 bench/chain_bench.py --ms 1 --no-sweep --alone --wk8 --reps 10 \
  --out "$D/chain_wk8.json" 2>&1 | grep -v "^layers" | tail -40 | tee "$D/chain_wk8.log"
timeout $(( $(left) - 3 )) python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py -k "eight_warps" 2>&1 \
  | tail -15 | tee "$D/tests.log"
tar -C "$OUT" -czf "$D.tgz" wk && rm -rf "$D"
echo "== wk warps done ($(left) s left)"
