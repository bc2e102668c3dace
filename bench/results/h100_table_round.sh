#!/usr/bin/env bash
# Session 37's first device call (nvidia-h100-x1): the issue-4 table on the card its targets were set on, with
# today's kernels (csrc/ and quantkit/kernels/ as GPU-tested in session 36 on 7b0b2c8), and two things beside it:
#   a. bench/device_round.sh, STEPS="bench probe": the build and self-check, the full table (every M from 1 to 2048,
#      groups 128 and 32, the five shapes), then the read-only access-pattern probe (bench/stream_probe.py:
#      how fast the decode kernel's bytes can be read at all on this card);
#   b. the split-K sweep (--tune) at M = 1 and 8 on the eval's four Llama-3-8B layers (q/k/v and gate/up fused),
#      group 128, with the time left.
#     bash bench/results/h100_table_round.sh OUT_DIR [SECONDS]   (ends within SECONDS, default 585;
#     OUT_DIR/a/round.tgz, OUT_DIR/b/tune.{json,log})
set -u
OUT=${1:?usage: h100_table_round.sh OUT_DIR [SECONDS]}
TOTAL=${2:-585}
T0=$(date +%s)
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
STEPS="bench probe" BENCH_LIMIT=340 KERNEL_ARGS="--reps 20 --ms 1,2,4,8,16,32,64,128,256,512,1024,2048" \
  bash bench/device_round.sh "$OUT/a" $(( TOTAL - 90 ))
rm -f "$OUT"/a/*.so
. bench/device_env.sh > /dev/null
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
mkdir -p "$OUT/b"
limit=$(( $(left) - 8 ))
if [ "$limit" -ge 30 ]; then
  timeout "$limit" python3 bench/kernel_bench.py --out "$OUT/b/tune.json" --reps 20 --tune --ms 1,8 --groups 128 \
    --shapes "28672x4096;6144x4096;4096x4096;4096x14336" > "$OUT/b/tune.log" 2>&1
  echo "== tune: rc $? ($(left) s left)"
else
  echo "== tune: no time left"
fi
