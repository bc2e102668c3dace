#!/usr/bin/env bash
# Session 41 (docs/kernel.md items 55-56): programmatic launches through the compiled decode step on the GPU, each
# call's outputs in one archive:
#     bash bench/results/pdl_round.sh OUT_DIR 1 [SECONDS]   build and self-check; the GPU tests (attention -> o_proj in
#                                                           a CUDA graph, the compiled step with every launch
#                                                           programmatic); attention + o_proj timed with and without
#                                                           (decode_attention_bench.py --o-proj, batch 1 and 8)
#     bash bench/results/pdl_round.sh OUT_DIR 2 [SECONDS]   compiled eval g128 b1/8/32, QUANTKIT_ATTENTION_PDL=1
#     bash bench/results/pdl_round.sh OUT_DIR 3 [SECONDS]   the same with QUANTKIT_INDUCTOR_PDL=1 too
#     bash bench/results/pdl_round.sh OUT_DIR 4 [SECONDS]   the batch-1/8 step profiled with both
# and the default on the same machine to compare with: bash bench/results/variant_round.sh OUT_DIR base 420
set -u
OUT=${1:?usage: pdl_round.sh OUT_DIR STEP [SECONDS]}
STEP=${2:?usage: pdl_round.sh OUT_DIR STEP [SECONDS]}
TOTAL=${3:-585}
DEADLINE=$(( $(date +%s) + TOTAL ))
left() { echo $(( DEADLINE - $(date +%s) )); }
D="$OUT/pdl$STEP"
mkdir -p "$D"
. bench/device_env.sh
case $STEP in
  1)
    timeout 200 python3 -c "
import logging, sys; logging.basicConfig(level=logging.INFO)
from quantkit.kernels import kernel_available, self_check
ok, why = kernel_available(); print('kernel_available', ok, why)
sys.exit(1) if not ok else self_check()" 2>&1 | tee "$D/kernel_selfcheck.log"
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_eval_gpu.py \
      -k "programmatically or programmatic_launches" 2>&1 | tee "$D/gpu_tests.log"
    timeout $(( $(left) - 5 )) python3 bench/decode_attention_bench.py --batch 1,8 --reps 50 --o-proj \
      --out "$D/decode_attention_pdl.json" 2>&1 | tee "$D/decode_attention_pdl.log" ;;
  2)
    QUANTKIT_ATTENTION_PDL=1 STEPS=compiled COMPILED_BATCH=1,8,32 bash bench/eval_speed.sh "$D/eval" $(( TOTAL - 10 )) ;;
  3)
    QUANTKIT_ATTENTION_PDL=1 QUANTKIT_INDUCTOR_PDL=1 STEPS=compiled COMPILED_BATCH=1,8,32 \
      bash bench/eval_speed.sh "$D/eval" $(( TOTAL - 10 )) ;;
  4)
    QUANTKIT_ATTENTION_PDL=1 QUANTKIT_INDUCTOR_PDL=1 timeout $(( $(left) - 10 )) python3 bench/profile_decode.py \
      --compile --fuse --batch 1,8 --out "$D/decode_profile_pdl.json" 2>&1 | tee "$D/decode_profile_pdl.log" ;;
esac
tar -C "$OUT" -czf "$D.tgz" "pdl$STEP" && rm -rf "$D"
echo "== pdl $STEP done ($(left) s left)"
