#!/usr/bin/env bash
# Session 47: when the decode kernel's blocks start, wait and leave where its kernels run back to back (the diagnostic
# build, csrc/w4a16_trace.h: QK_STREAM_TRACE=1 through QUANTKIT_KERNEL_DEFINES; bench/stream_trace.py). One archive:
#     bash bench/results/trace_round.sh OUT_DIR [SECONDS]
set -u
OUT=${1:?usage: trace_round.sh OUT_DIR [SECONDS]}
TOTAL=${2:-585}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/trace"
mkdir -p "$D"
. bench/device_env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$D/nvidia-smi.csv"
QUANTKIT_KERNEL_DEFINES="QK_STREAM_TRACE=1" timeout $(( $(left) - 5 )) python3 bench/stream_trace.py --ms 1,8 \
  --out "$D/stream_trace.json" 2>&1 | grep -v "^layers" | tail -40 | tee "$D/stream_trace.log"
tar -C "$OUT" -czf "$D.tgz" trace && rm -rf "$D"
echo "== trace done ($(left) s left)"
