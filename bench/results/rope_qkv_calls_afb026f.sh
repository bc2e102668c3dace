#!/usr/bin/env bash
# Session 58's device calls (one H100: NVIDIA H100 80GB HBM3, driver 580.159.04), as they ran:
#   1. afb026f: bash bench/results/rope_qkv_round.sh OUT 1
#        rope_qkv_h100_afb026f_tests.log: test_rope_epilogue passed (bf16, fp16); the steps test failed at its own count
#        of rope_qkv calls (with CUDA graphs, two a layer in prepare), before comparing anything; -x stopped the call.
#   2. afb026f with that count fixed (the test change of 3525965), on the same warm machine:
#        bash bench/results/rope_qkv_round.sh OUT 1
#        rope_qkv_h100_afb026f_tests_2.log: the three tests passed; rope_qkv_h100_afb026f_selfcheck.log: the build's
#        self-check (ROPE_CASE included) passed; rope_qkv_h100_afb026f_eval_b1.log: the batch-1 eval with
#        QUANTKIT_ROPE_IN_QKV=1 failed in its first compiled step (a graph break before the op; the op's graph alone
#        from inductor's cache of the tiny model of the test before, with its q width), fixed in 3525965.
# Every later start (nvidia-h200 and nvidia-h100-x1) was refused; step 5 (fafe29e) did not run.
bash "$(dirname "$0")/rope_qkv_round.sh" "${1:?usage: rope_qkv_calls_afb026f.sh OUT_DIR}" 1
