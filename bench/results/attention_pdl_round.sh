#!/usr/bin/env bash
# Session 41 (docs/kernel.md item 55): the split-KV attention kernels' programmatic launches into the 4-bit o_proj
# (QUANTKIT_ATTENTION_PDL, quantkit.eval.decode_attention.PDL) on the GPU, outputs in one archive:
#     bash bench/results/attention_pdl_round.sh OUT_DIR 1 [SECONDS]   build and self-check, the GPU test of the chain
#                                                                     in a CUDA graph, attention + o_proj timed with
#                                                                     and without (batch 1 and 8)
#     bash bench/results/attention_pdl_round.sh OUT_DIR 2 [SECONDS]   compiled eval g128 b1/8/32 with it; compare with
#                                                                     the default on the same machine:
#                                                                     bash bench/results/variant_round.sh OUT_DIR base 420
set -u
OUT=${1:?usage: attention_pdl_round.sh OUT_DIR STEP [SECONDS]}
STEP=${2:?usage: attention_pdl_round.sh OUT_DIR STEP [SECONDS]}
TOTAL=${3:-585}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/pdl$STEP"
mkdir -p "$D"
. bench/device_env.sh
case $STEP in
  1)
    timeout 150 python3 -c "
import logging, sys; logging.basicConfig(level=logging.INFO)
from quantkit.kernels import kernel_available, self_check
ok, why = kernel_available(); print('kernel_available', ok, why)
sys.exit(1) if not ok else self_check()" 2>&1 | tee "$D/kernel_selfcheck.log"
    timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_eval_gpu.py -k "programmatically" 2>&1 \
      | tee "$D/gpu_tests.log"
    timeout $(( $(left) - 5 )) python3 bench/decode_attention_bench.py --batch 1,8 --reps 50 --o-proj \
      --out "$D/decode_attention_pdl.json" 2>&1 | tee "$D/decode_attention_pdl.log" ;;
  2)
    QUANTKIT_ATTENTION_PDL=1 STEPS=compiled COMPILED_BATCH=1,8,32 bash bench/eval_speed.sh "$D/eval" $(( TOTAL - 10 )) ;;
esac
tar -C "$OUT" -czf "$D.tgz" "pdl$STEP" && rm -rf "$D"
echo "== pdl $STEP done ($(left) s left)"
