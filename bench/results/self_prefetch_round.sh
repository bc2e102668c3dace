#!/usr/bin/env bash
# Session 46: the decode kernel's blocks request their whole range (weights and scales of their tile and split) into
# the L2 before they wait for the kernel before them (csrc QK_STREAM_SELF_PREFETCH, a build macro set through
# QUANTKIT_KERNEL_DEFINES; 0, the default, builds the same code as before). Measured slower (docs/kernel.md item 60), the
# macro was taken out of the tree again: the script runs as it ran only on 405ae51's tree. Outputs in one archive a step:
#     bash bench/results/self_prefetch_round.sh OUT_DIR 1 [SECONDS]   the default build: the step's four kernels a layer
#                                                                    chained (chain_bench, with every kernel a plain
#                                                                    launch too, and each role alone); then the same
#                                                                    with the prefetch on layers of up to 2^26 weights
#                                                                    (q/k/v, o_proj, down)
#     bash bench/results/self_prefetch_round.sh OUT_DIR 2 [SECONDS]   the prefetch on every layer (gate/up too): the
#                                                                    chain; then compiled eval g128 at batch 1 with
#                                                                    SP (the macro's value; 0: the default build)
#     bash bench/results/self_prefetch_round.sh OUT_DIR 3 [SECONDS]   compiled eval g128 at batch 1, 8, 32 with SP
set -u
OUT=${1:?usage: self_prefetch_round.sh OUT_DIR STEP [SECONDS]}
STEP=${2:?usage: self_prefetch_round.sh OUT_DIR STEP [SECONDS]}
TOTAL=${3:-585}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/sp$STEP"
mkdir -p "$D"
. bench/device_env.sh
defines() { [ "$1" = 0 ] || echo "QK_STREAM_SELF_PREFETCH=$1"; }  # 0: no macro, the default build itself
chain() {  # chain NAME MACRO_VALUE CHAIN_ARGS...: build (inside chain_bench's self-check) and the chain
  local name=$1 sp=$2; shift 2
  QUANTKIT_KERNEL_DEFINES="$(defines $sp)" timeout $(( $(left) - 5 )) python3 bench/chain_bench.py \
    --ms 1,8 --alone "$@" --out "$D/chain_$name.json" 2>&1 | grep -v "^layers" | tail -30 | tee "$D/chain_$name.log"
}
case $STEP in
  1)
    chain default 0 --only '^pdl_off$'
    chain sp26 67108864 --no-sweep ;;
  2)
    chain sp28 268435456 --no-sweep
    QUANTKIT_KERNEL_DEFINES="$(defines ${SP:?})" STEPS=compiled COMPILED_BATCH=1 \
      bash bench/eval_speed.sh "$D/eval_b1" $(( $(left) - 10 )) ;;
  3)
    QUANTKIT_KERNEL_DEFINES="$(defines ${SP:?})" STEPS=compiled COMPILED_BATCH=1,8,32 \
      bash bench/eval_speed.sh "$D/eval" $(( $(left) - 10 )) ;;
esac
tar -C "$OUT" -czf "$D.tgz" "sp$STEP" && rm -rf "$D"
echo "== self-prefetch $STEP done ($(left) s left)"
