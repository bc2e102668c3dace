#!/usr/bin/env bash
# Session 50, on 78330be (one NVIDIA H100 80GB HBM3): the compiled eval at batch 1 with the decode kernel's blocks of 8
# warps at one token tile (then opt-in), after the kernels' build and self-check; then, on the same machine, the
# kernels' GPU tests with them (tests/test_kernels_gpu.py's subset below; the whole file with tests/test_eval_gpu.py,
# cut off by its 95-s limit: wk8_78330be_h100_tests.log). The run's files, renamed:
#     eval_llama-3-8b_g128_compiled.*  -> eval_llama-3-8b_g128_compiled_wk8_78330be_h100_b1.*
#     kernel_selfcheck.log, nvidia-smi.csv -> wk8_78330be_h100_selfcheck.log, wk8_78330be_h100_nvidia-smi.csv
#     bash bench/results/wk8_b1_round.sh OUT_DIR
set -u
OUT=${1:?usage: wk8_b1_round.sh OUT_DIR}
QUANTKIT_STREAM_WK_WARPS=8 STEPS=compiled COMPILED_BATCH=1 bash bench/eval_speed.sh "$OUT/wk8_b1" 330
. bench/device_env.sh >/dev/null
QUANTKIT_STREAM_WK_WARPS=8 timeout 110 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py \
  -k "eight_warps or sharing_a_tile or splits_and_tiles or gated_pair_epilogue or fold_in or programmatic_launch_chain or match_reference" \
  2>&1 | tail -15
QUANTKIT_STREAM_WK_WARPS=8 timeout 95 python3 -m pytest -q -p no:cacheprovider -rs tests/test_kernels_gpu.py \
  tests/test_eval_gpu.py 2>&1 | tail -15
