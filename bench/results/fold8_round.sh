#!/usr/bin/env bash
# Session 52 (docs/kernel.md item 64): the fold (ops.Fold, the eval's QUANTKIT_NORM_FOLD=1) with each warp's part of
# the RMSNorm's sums of squares taken right after its wait instead of after the main loop, and in blocks of 8 warps at
# one token tile like the plain kernel. One call: the build and self-check (FOLD_CASE now in blocks of 8), the fold's
# and the blocks of 8's GPU tests, then the compiled eval g128 at batch 1 with the fold and without it (the default),
# on the same machine. One archive, OUT_DIR/fold8.tgz:
#     bash bench/results/fold8_round.sh OUT_DIR [SECONDS]
set -u
OUT=${1:?usage: fold8_round.sh OUT_DIR [SECONDS]}
TOTAL=${2:-585}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/fold8"
mkdir -p "$D"
. bench/device_env.sh
unset QUANTKIT_NORM_FOLD QUANTKIT_STREAM_WK_WARPS
timeout 300 python3 -c "
import logging, sys; logging.basicConfig(level=logging.INFO)
from quantkit.kernels import kernel_available, self_check
ok, why = kernel_available(); print('kernel_available', ok, why)
sys.exit(1) if not ok else self_check()" 2>&1 | tail -4 | tee "$D/build.log"
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py \
  -k "fold or eight_warps or bit_for_bit or prefetch" 2>&1 | tail -6 | tee "$D/tests.log"  # (as it ran:
# tests/test_eval.py too, whose gguf import the GPU image lacks: nothing ran; fold8_calls_eaf81b8.sh ran these after)
QUANTKIT_NORM_FOLD=1 STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh "$D/eval_fold" $(( ($(left) - 10) / 2 )) \
  2>&1 | grep -v "quantizing" | tail -9
STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh "$D/eval_default" $(( $(left) - 8 )) 2>&1 \
  | grep -v "quantizing" | tail -9
tar -C "$OUT" -czf "$D.tgz" fold8 && rm -rf "$D"
echo "== fold8 done ($(left) s left)"
