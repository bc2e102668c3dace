#!/usr/bin/env bash
# Session 51 (docs/kernel.md item 63): the issue-4 kernel table's rows that the blocks of 8 warps at one token tile
# change (M <= 8; the default since session 50, and the README's table, df03aba, predates them), both groups, then the
# same rows at group 128 with blocks of 4 (QUANTKIT_STREAM_WK_WARPS=4) on the same machine. kernel_bench writes its JSON after every shape, so a
# run the deadline cuts keeps what it measured. NAME is the commit the kernels are measured on. One archive,
# OUT_DIR/kt.tgz:
#     bash bench/results/kernel_wk8_round.sh OUT_DIR NAME [SECONDS]
# Run once, on 5a898c4 (one NVIDIA H100 80GB HBM3): `bash bench/results/kernel_wk8_round.sh $OUT 5a898c4 320` (132 s;
# its files: kernel_h100_5a898c4_m8.{json,log} and kernel_h100_wk4_5a898c4.{json,log}), then on the same warm machine
# `python3 bench/kernel_bench.py --ms 16,32,64,128,256,1024 --out $OUT/kt2/kernel_h100_5a898c4_m16.json` (34 s) and
# the whole table, `python3 bench/kernel_bench.py --out $OUT/kt3/kernel_h100_5a898c4.json` (37 s): the README's table.
set -u
OUT=${1:?usage: kernel_wk8_round.sh OUT_DIR NAME [SECONDS]}
NAME=${2:?usage: kernel_wk8_round.sh OUT_DIR NAME [SECONDS]}
TOTAL=${3:-480}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/kt"
mkdir -p "$D"
. bench/device_env.sh
unset QUANTKIT_STREAM_WK_WARPS
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$D/nvidia-smi.csv" 2>&1
# the first call builds the extension (80-200 s) and leaves 75 s for the second
timeout $(( $(left) - 75 )) python3 bench/kernel_bench.py --ms 1,2,4,8 --out "$D/kernel_h100_$NAME.json" 2>&1 \
  | tee "$D/kernel_h100_$NAME.log" | tail -4
echo "== blocks of 4 ($(left) s left)"
[ "$(left)" -gt 30 ] && QUANTKIT_STREAM_WK_WARPS=4 timeout $(( $(left) - 5 )) python3 bench/kernel_bench.py \
  --ms 1,2,4,8 --groups 128 --out "$D/kernel_h100_wk4_$NAME.json" 2>&1 | tee "$D/kernel_h100_wk4_$NAME.log" | tail -4
tar -C "$OUT" -czf "$D.tgz" kt && rm -rf "$D"
echo "== done ($(left) s left)"
