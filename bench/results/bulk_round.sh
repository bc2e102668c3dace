#!/usr/bin/env bash
# Session 47: the decode kernel's bulk instances (csrc qk_mma_bulk, ops.STREAM_BULK / w4a16_linear(bulk=True)): one
# thread a block requests the block's whole range of weights and scales into shared memory by the copy engine before the
# block waits for the kernel before it. Measured slower in every role (docs/kernel.md item 61) and taken out of the tree
# again: the script runs as it ran only on 544af2f's tree. Outputs in one archive a step:
#     bash bench/results/bulk_round.sh OUT_DIR 1 [SECONDS]   build and self-check, the bulk GPU test and the programmatic
#                                                           chains', then the step's four kernels a layer chained
#                                                           (chain_bench --no-sweep --alone: the default, the bulk
#                                                           variants, each role alone both ways, bf16)
#     bash bench/results/bulk_round.sh OUT_DIR 2 [SECONDS]   compiled eval g128 at batch 1 with QUANTKIT_STREAM_BULK=1,
#                                                           then without (the default), on the same machine (not run)
set -u
OUT=${1:?usage: bulk_round.sh OUT_DIR STEP [SECONDS]}
STEP=${2:?usage: bulk_round.sh OUT_DIR STEP [SECONDS]}
TOTAL=${3:-585}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/bulk$STEP"
mkdir -p "$D"
. bench/device_env.sh
case $STEP in
  1)
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$D/nvidia-smi.csv"
    timeout $(( $(left) - 200 )) python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py \
      -k "bulk or programmatic_launch_chain or cluster_split_k or gated_pair_epilogue" 2>&1 | tail -30 | tee "$D/tests.log"
    timeout $(( $(left) - 5 )) python3 bench/chain_bench.py --ms 1,8 --no-sweep --alone --out "$D/chain.json" 2>&1 \
      | grep -v "^layers" | tail -40 | tee "$D/chain.log" ;;
  2)
    QUANTKIT_STREAM_BULK=1 STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh "$D/eval_bulk" $(( ($(left) - 10) / 2 ))
    STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh "$D/eval_default" $(( $(left) - 10 )) ;;
esac
tar -C "$OUT" -czf "$D.tgz" "bulk$STEP" && rm -rf "$D"
echo "== bulk $STEP done ($(left) s left)"
