#!/usr/bin/env bash
# Session 52 (docs/kernel.md item 64): the fold with each warp's part of the RMSNorm's sums of squares loaded together
# with its first x's and added up after them (the experimental build QK_FOLD_EARLY=1, whose one-token-tile fold
# instances spill 8-18 bytes), against the same build without the fold. Ran on 435f7f0; measured slower and taken
# out of the tree again in the commit after it (its code: git show 435f7f0 -- csrc/w4a16_mma_cuda.h). One call, after the build and self-check:
# the fold's GPU tests, then the compiled batch-1 step profiled (bench/profile_decode.py: the quantized and the bf16
# models' graph-replayed steps) with the fold, then without it if the time allows. One archive, OUT_DIR/fold_early.tgz:
#     bash bench/results/fold_early_round.sh OUT_DIR [SECONDS]
set -u
OUT=${1:?usage: fold_early_round.sh OUT_DIR [SECONDS]}
TOTAL=${2:-360}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/fold_early"
mkdir -p "$D"
. bench/device_env.sh
unset QUANTKIT_NORM_FOLD QUANTKIT_STREAM_WK_WARPS
export QUANTKIT_KERNEL_DEFINES="QK_FOLD_EARLY=1"
timeout $(( $(left) - 20 )) python3 -c "
import logging, sys; logging.basicConfig(level=logging.INFO)
from quantkit.kernels import kernel_available, self_check
ok, why = kernel_available(); print('kernel_available', ok, why)
sys.exit(1) if not ok else self_check()" 2>&1 | tail -3 | tee "$D/build.log"
profile() {  # profile NAME FOLD
  QUANTKIT_NORM_FOLD=$2 timeout $(( $(left) - 5 )) python3 bench/profile_decode.py --batch 1 --compile --pdl on --fuse \
    --out "$D/decode_profile_$1.json" 2>&1 | grep -v "quantizing\|warn" | grep "^quantized\|^baseline" | tee "$D/$1.log"
}
profile fold 1
timeout 40 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py -k fold 2>&1 | tail -2 | tee "$D/tests.log"
[ "$(left)" -gt 100 ] && profile nofold 0
tar -C "$OUT" -czf "$D.tgz" fold_early && rm -rf "$D"
echo "== fold_early done ($(left) s left)"
