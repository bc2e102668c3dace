#!/usr/bin/env bash
# Written in session 37 for the next device call, run in session 38: the split-KV attention's in-kernel combine
# (quantkit.eval.decode_attention.COMBINE "last", docs/kernel.md item 49) on a GPU for the first time.
#   PHASE=check (default): its GPU check against SDPA and the default (tests/test_eval_gpu.py -k split_kv, both
#     ways; the GPU test of the greedy token beside it; the first test builds the W4A16 extension), then, unless
#     ATTENTION=0, the attention alone at batch 1 / 8 / 32, split_last beside split (bench/decode_attention_bench.py);
#   PHASE=eval: the compiled eval, group 128, batch 1 / 8 / 32 (or COMPILED_BATCH), with COMBINE "last" in both models; run it on the
#     same warm machine as a default run (PHASE=eval COMBINE=kernel) to compare, since ratios move ~3% between
#     machines (docs/kernel.md item 48).
#     bash bench/results/combine_round.sh OUT_DIR [SECONDS]   (OUT_DIR/combine.tgz)
# Run in session 38 through bench/results/h100_combine_round.sh (its header says how it went). COMBINE "last" was taken
# out after it, measured slower (docs/kernel.md item 50): QUANTKIT_SPLIT_KV_COMBINE is no longer read.
set -u
OUT=${1:?usage: combine_round.sh OUT_DIR [SECONDS]}
TOTAL=${2:-585}
T0=$(date +%s)
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
R="$OUT/combine"
mkdir -p "$R"
. bench/device_env.sh > /dev/null
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$R/gpu.txt"
if [ "${PHASE:-check}" = check ]; then
  timeout 220 python3 -m pytest -q -rs -p no:cacheprovider tests/test_eval_gpu.py -k "${TESTS:-split_kv or greedy}" > "$R/tests.log" 2>&1
  echo "== tests: rc $?"; tail -n 2 "$R/tests.log"
  [ "${ATTENTION:-1}" = 1 ] && timeout $(( $(left) - 10 )) python3 bench/decode_attention_bench.py --batch 1,8,32 --out "$R/attention.json" \
    > "$R/attention.log" 2>&1
  echo "== attention: rc $?"; grep "batch" "$R/attention.log"
else
  QUANTKIT_SPLIT_KV_COMBINE=${COMBINE:-last} STEPS=compiled COMPILED_BATCH=${COMPILED_BATCH:-1,8,32} \
    bash bench/eval_speed.sh "$R" $(( $(left) - 10 ))
fi
tar -C "$OUT" -czf "$OUT/combine.tgz" combine && rm -rf "$R"
echo "== done ($(left) s left)"
