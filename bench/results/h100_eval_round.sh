#!/usr/bin/env bash
# Session 37's second device call (nvidia-h100-x1): issue 7's group-32 run on the card its targets were set on, and
# where a decode step's time goes at batch 1 and 8 there:
#   e. bench/eval_speed.sh, STEPS=compiled, COMPILED_GROUP=32: the build and self-check, then `quantkit eval
#      --random-weights llama-3-8b --throughput --compile --group-size 32 --batch 1,8,32` (eval_llama-3-8b_g32_compiled.*);
#   p. bench/profile_decode.py --compile --fuse --batch 1,8 with the time left (profile.{json,log}).
#     bash bench/results/h100_eval_round.sh OUT_DIR [SECONDS]   (ends within SECONDS, default 585)
set -u
OUT=${1:?usage: h100_eval_round.sh OUT_DIR [SECONDS]}
TOTAL=${2:-585}
T0=$(date +%s)
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
STEPS=compiled COMPILED_GROUP=32 COMPILED_BATCH=1,8,32 COMPILED_LIMIT=400 bash bench/eval_speed.sh "$OUT/e" $(( TOTAL - 100 ))
. bench/device_env.sh > /dev/null
mkdir -p "$OUT/p"
limit=$(( $(left) - 8 ))
if [ "$limit" -ge 40 ]; then
  timeout "$limit" python3 bench/profile_decode.py --compile --fuse --batch 1,8 --out "$OUT/p/profile.json" \
    > "$OUT/p/profile.log" 2>&1
  echo "== profile: rc $? ($(left) s left)"
else
  echo "== profile: no time left"
fi
