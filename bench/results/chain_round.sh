#!/usr/bin/env bash
# Session 43: the decode step's W4A16 linears alone, chained as in a step (bench/chain_bench.py), to check the decode
# kernel's split-K rule and its loads in flight where its kernels run back to back; outputs in one archive:
#     bash bench/results/chain_round.sh OUT_DIR 1 [SECONDS]   build; the chain at M = 1 and 8 with every role's split
#                                                             sweep; the same with QK_STREAM_U_SMALL=8 (built while the
#                                                             first runs); Nsight Compute of down at M = 1 if time is left
#     bash bench/results/chain_round.sh OUT_DIR 2 [SECONDS]   step 1 without Nsight Compute (step 1's chains stopped at
#                                                             their check, whose last-layer comparison was 0 / 0)
#     bash bench/results/chain_round.sh OUT_DIR 3 [SECONDS]   the decode kernel at one token tile with launch bounds of
#                                                             9 and 10 blocks a multiprocessor (QK_STREAM_MIN_BLOCKS,
#                                                             built beside the default) against the default, each with
#                                                             o_proj in 4 splits too, at M = 1 and 8
#     bash bench/results/chain_round.sh OUT_DIR 4 [SECONDS]   compiled eval g128 at batch 1 with the one-batch split
#                                                             and without (QUANTKIT_STREAM_ONE_BATCH=0); then the kernel
#                                                             table (bench/kernel_bench.py) if time is left. The rule
#                                                             (o_proj in 4 splits at M = 1) was on the session's working
#                                                             tree only and is not kept (docs/kernel.md item 57): at
#                                                             this commit both evals run the same code
#     bash bench/results/chain_round.sh OUT_DIR 5 [SECONDS]   (prepared in session 43, not yet run) the chain at M = 1
#                                                             and 8 with each role's kernel alone and every kernel a
#                                                             plain launch (--alone, pdl_off)
set -u
OUT=${1:?usage: chain_round.sh OUT_DIR STEP [SECONDS]}
STEP=${2:?usage: chain_round.sh OUT_DIR STEP [SECONDS]}
TOTAL=${3:-585}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/chain$STEP"
mkdir -p "$D"
. bench/device_env.sh
BUILD="
import logging, sys; logging.basicConfig(level=logging.INFO)
from quantkit.kernels import kernel_available, self_check
ok, why = kernel_available(); print('kernel_available', ok, why)
sys.exit(1) if not ok else self_check()"
case $STEP in
  1|2)
    timeout 200 python3 -c "$BUILD" 2>&1 | tee "$D/build.log"
    (QUANTKIT_KERNEL_DEFINES="QK_STREAM_U_SMALL=8" timeout 250 python3 -c "$BUILD" > "$D/build_u8.log" 2>&1) &
    timeout 150 python3 bench/chain_bench.py --ms 1,8 --out "$D/chain.json" 2>&1 | tee "$D/chain.log"
    wait
    tail -3 "$D/build_u8.log"
    QUANTKIT_KERNEL_DEFINES="QK_STREAM_U_SMALL=8" timeout 150 python3 bench/chain_bench.py --ms 1,8 \
      --out "$D/chain_u8.json" 2>&1 | tee "$D/chain_u8.log"
    if [ "$STEP" = 1 ] && [ "$(left)" -gt 60 ]; then
      timeout $(( $(left) - 15 )) ncu --clock-control none --profile-from-start off -k regex:qk_mma_stream \
        --launch-skip 3 --launch-count 1 --set full python3 bench/kernel_ncu.py --n 4096 --k 14336 --m 1 \
        --backend mma > "$D/ncu_down_m1.txt" 2>&1
      tail -5 "$D/ncu_down_m1.txt"
    fi ;;
  3)
    for mb in 9 10; do
      (QUANTKIT_KERNEL_DEFINES="QK_STREAM_MIN_BLOCKS=$mb" timeout 400 python3 -c "$BUILD" > "$D/build_mb$mb.log" 2>&1) &
    done
    timeout 400 python3 -c "$BUILD" 2>&1 | tee "$D/build.log"
    timeout 120 python3 bench/chain_bench.py --ms 1,8 --only '^o_s4_ws$' --out "$D/chain.json" 2>&1 | tee "$D/chain.log"
    wait
    for mb in 9 10; do
      tail -2 "$D/build_mb$mb.log"
      QUANTKIT_KERNEL_DEFINES="QK_STREAM_MIN_BLOCKS=$mb" timeout 120 python3 bench/chain_bench.py --ms 1,8 \
        --only '^o_s4_ws$' --out "$D/chain_mb$mb.json" 2>&1 | tee "$D/chain_mb$mb.log"
    done ;;
  4)
    timeout 200 python3 -c "$BUILD" 2>&1 | tee "$D/build.log"
    STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh "$D/eval_on" $(( ($(left) - 20) / 2 ))
    QUANTKIT_STREAM_ONE_BATCH=0 STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh "$D/eval_off" \
      $(( $(left) - 15 ))
    if [ "$(left)" -gt 70 ]; then
      timeout $(( $(left) - 10 )) python3 bench/kernel_bench.py --out "$D/kernel.json" 2>&1 | tail -40 > "$D/kernel.log"
    fi ;;
  5)
    timeout 200 python3 -c "$BUILD" 2>&1 | tee "$D/build.log"
    timeout $(( $(left) - 15 )) python3 bench/chain_bench.py --ms 1,8 --alone --only '^pdl_off$' \
      --out "$D/chain_alone.json" 2>&1 | tee "$D/chain_alone.log" ;;
esac
tar -C "$OUT" -czf "$D.tgz" "chain$STEP" && rm -rf "$D"
echo "== chain $STEP done ($(left) s left)"
