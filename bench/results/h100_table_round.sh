#!/usr/bin/env bash
# Session 37's first device call (nvidia-h100-x1): the issue-4 table on the card its targets were set on, with
# today's kernels (csrc/ and quantkit/kernels/ as GPU-tested in session 36 on 7b0b2c8), and two things beside it:
#   a. bench/device_round.sh, STEPS=bench: the build and self-check, the full table (the M from 1 to 1024,
#      groups 128 and 32, the five shapes);
#   b. the split-K sweep and every variant (--tune) at M = 1, 8 (decode at batch 1 and 8) and 512 (prefill at batch 1)
#      on the eval's four Llama-3-8B layers (q/k/v and gate/up fused), group 128;
#   c. with the time left, the read-only access-pattern probe (bench/stream_probe.py: how fast the decode kernel's
#      bytes can be read at all on this card).
#     bash bench/results/h100_table_round.sh OUT_DIR [SECONDS]   (ends within SECONDS, default 585;
#     OUT_DIR/a/round.tgz, OUT_DIR/b/{tune,stream_probe}.{json,log})
set -u
OUT=${1:?usage: h100_table_round.sh OUT_DIR [SECONDS]}
TOTAL=${2:-585}
T0=$(date +%s)
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
STEPS=bench BENCH_LIMIT=330 KERNEL_ARGS="--reps 20" bash bench/device_round.sh "$OUT/a" $(( TOTAL - 150 ))
rm -f "$OUT"/a/*.so
. bench/device_env.sh > /dev/null
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
mkdir -p "$OUT/b"
limit=$(( $(left) - 50 ))
if [ "$limit" -ge 30 ]; then
  timeout "$limit" python3 bench/kernel_bench.py --out "$OUT/b/tune.json" --reps 20 --tune --ms 1,8,512 --groups 128 \
    --shapes "28672x4096;6144x4096;4096x4096;4096x14336" > "$OUT/b/tune.log" 2>&1
  echo "== tune: rc $? ($(left) s left)"
else
  echo "== tune: no time left"
fi
limit=$(( $(left) - 8 ))
if [ "$limit" -ge 20 ]; then
  timeout "$limit" python3 bench/stream_probe.py --out "$OUT/b/stream_probe.json" > "$OUT/b/stream_probe.log" 2>&1
  echo "== stream probe: rc $? ($(left) s left)"
fi
