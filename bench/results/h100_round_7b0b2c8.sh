#!/usr/bin/env bash
# Session 36's three device calls, one after the other on one NVIDIA H100 (nvidia-h100-x1, warm between them), on the
# working tree of 7b0b2c8 (the machine's .git said 304f5a3, an older copy; csrc/ is the same in both):
#   1. bash bench/results/pipe_round.sh OUT           -> kernel_h100_build_7b0b2c8.log (first half),
#      kernel_h100_tests_7b0b2c8.log (95 passed, 6 skipped), kernel_h100_pipe_7b0b2c8.{json,log} (M = 16 and 32, g128,
#      the probe's four levels, qk_wgmma_ws_sk_bt32_pipe beside qk_wgmma_ws_sk_bt32; neither smoke run needed --skip)
#   2. the batch-32 compiled decode step with and without the pipelined 32-token instance
#      -> decode_profile_h100_pipe_7b0b2c8.{json,log}, kernel_h100_build_7b0b2c8.log (second half)
#   3. the eval, compiled, batch 1 / 8 / 32 -> eval_llama-3-8b_g128_compiled_7b0b2c8_h100.{json,md,png,log},
#      eval_h100_selfcheck_7b0b2c8.log
#     bash bench/results/h100_round_7b0b2c8.sh OUT_DIR   (each step a device call of its own, up to 600 s)
set -u
OUT=${1:?usage: h100_round_7b0b2c8.sh OUT_DIR}
bash bench/results/pipe_round.sh "$OUT/1"
STEPS=profile PROFILES="--compile --fuse --batch 32 --ws-pipelined both" PROFILE_LIMIT=420 \
  bash bench/device_round.sh "$OUT/2" 520
STEPS=compiled COMPILED_BATCH=1,8,32 bash bench/eval_speed.sh "$OUT/3" 480
