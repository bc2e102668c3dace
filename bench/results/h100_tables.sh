#!/usr/bin/env bash
# The README's H100 eval tables from the committed JSON (no GPU needed): which runs each table lists, newest first,
# each with the commit whose kernels and dispatch it measured. A new run: add its line at the top and run
#     bash bench/results/h100_tables.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
R=bench/results
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=.
# the current defaults only (the README's first H100 table), then every H100 run
$PY bench/eval_table.py \
  "$R/eval_llama-3-8b_g128_compiled_eee3a1d_h100_greedy_b1.json@eee3a1d (QUANTKIT_GREEDY_ONE_LAUNCH=1, now the default)" \
  "$R/eval_llama-3-8b_g128_compiled_eee3a1d_h100_greedy_b8.json@eee3a1d (same machine, QUANTKIT_GREEDY_ONE_LAUNCH=1)" \
  "$R/eval_llama-3-8b_g128_compiled_fea6522_h100_shared_b32.json@fea6522 (another H100)" \
  "$R/eval_llama-3-8b_g32_compiled_28015c1_h100.json@28015c1 (another H100)" \
  > $R/eval_speed_current.md
$PY bench/eval_table.py \
  "$R/eval_llama-3-8b_g128_compiled_eee3a1d_h100_both_b1.json@eee3a1d (QUANTKIT_ROPE_IN_ATTENTION=1 QUANTKIT_GREEDY_ONE_LAUNCH=1: rope in the quantized model only)" \
  "$R/eval_llama-3-8b_g128_compiled_eee3a1d_h100_default_b1.json@eee3a1d (same machine)" \
  "$R/eval_llama-3-8b_g128_compiled_eee3a1d_h100_rope_b1.json@eee3a1d (same machine, QUANTKIT_ROPE_IN_ATTENTION=1: the quantized model only)" \
  "$R/eval_llama-3-8b_g128_compiled_eee3a1d_h100_both_b1_2.json@eee3a1d (same machine, both again)" \
  "$R/eval_llama-3-8b_g128_compiled_eee3a1d_h100_greedy_b1.json@eee3a1d (same machine, QUANTKIT_GREEDY_ONE_LAUNCH=1)" \
  "$R/eval_llama-3-8b_g128_compiled_eee3a1d_h100_default_b1_2.json@eee3a1d (same machine, again)" \
  "$R/eval_llama-3-8b_g128_compiled_eee3a1d_h100_greedy_b8.json@eee3a1d (same machine, QUANTKIT_GREEDY_ONE_LAUNCH=1)" \
  "$R/eval_llama-3-8b_g128_compiled_eee3a1d_h100_default_b8.json@eee3a1d (same machine)" \
  "$R/eval_llama-3-8b_g128_compiled_eee3a1d_h100_greedy_b1_2.json@eee3a1d (same machine, QUANTKIT_GREEDY_ONE_LAUNCH=1, again)" \
  "$R/eval_llama-3-8b_g128_compiled_fea6522_h100_shared_b1.json@fea6522" \
  "$R/eval_llama-3-8b_g128_compiled_fea6522_h100_counters_b1.json@fea6522 (same machine, QUANTKIT_SHARED_CACHE_POSITION=0)" \
  "$R/eval_llama-3-8b_g128_compiled_fea6522_h100_shared_b1_2.json@fea6522 (same machine, again)" \
  "$R/eval_llama-3-8b_g128_compiled_fea6522_h100_counters_b1_2.json@fea6522 (same machine, QUANTKIT_SHARED_CACHE_POSITION=0, again)" \
  "$R/eval_llama-3-8b_g128_compiled_fea6522_h100_shared_b8.json@fea6522 (same machine)" \
  "$R/eval_llama-3-8b_g128_compiled_fea6522_h100_counters_b8.json@fea6522 (same machine, QUANTKIT_SHARED_CACHE_POSITION=0)" \
  "$R/eval_llama-3-8b_g128_compiled_fea6522_h100_shared_b32.json@fea6522 (same machine)" \
  "$R/eval_llama-3-8b_g128_compiled_0d70d44_h100b_nofold_b1.json@0d70d44 (another H100)" \
  "$R/eval_llama-3-8b_g128_compiled_0d70d44_h100_nofold_b1.json@0d70d44" \
  "$R/eval_llama-3-8b_g128_compiled_0d70d44_h100_fold_ss_b1.json@0d70d44 (same machine, QUANTKIT_NORM_FOLD=1)" \
  "$R/eval_llama-3-8b_g128_compiled_0d70d44_h100_fold_ss_mlp_b1.json@0d70d44 (same machine, QUANTKIT_NORM_FOLD=1 QUANTKIT_NORM_FOLD_SS_DOWN=0)" \
  "$R/eval_llama-3-8b_g128_compiled_0d70d44_h100_fold_noss_b1.json@0d70d44 (same machine, QUANTKIT_NORM_FOLD=1 QUANTKIT_NORM_FOLD_SS=0)" \
  "$R/eval_llama-3-8b_g128_compiled_eaf81b8_h100_fold_b1.json@eaf81b8 (QUANTKIT_NORM_FOLD=1)" \
  "$R/eval_llama-3-8b_g128_compiled_eaf81b8_h100_nofold_b1.json@eaf81b8 (same machine)" \
  "$R/eval_llama-3-8b_g32_compiled_28015c1_h100.json@28015c1 (another H100)" \
  "$R/eval_llama-3-8b_g128_compiled_4d26776_h100_wk8.json@4d26776 (another H100)" \
  "$R/eval_llama-3-8b_g128_compiled_4d26776_h100_b32.json@4d26776 (same machine)" \
  "$R/eval_llama-3-8b_g128_compiled_4d26776_h100_wk4.json@4d26776 (same machine, QUANTKIT_STREAM_WK_WARPS=4)" \
  "$R/eval_llama-3-8b_g128_compiled_wk8_78330be_h100_b1.json@78330be" \
  "$R/eval_llama-3-8b_g128_compiled_405ae51_h100.json@405ae51" \
  "$R/eval_llama-3-8b_g32_compiled_405ae51_h100.json@405ae51 (another H100)" \
  "$R/eval_llama-3-8b_g128_compiled_65fc5cc_h100_two_b1.json@65fc5cc" \
  "$R/eval_llama-3-8b_g128_compiled_65fc5cc_h100_mlp_b1.json@65fc5cc (same machine)" \
  "$R/eval_llama-3-8b_g128_compiled_a279aa1_h100_mlp_b1.json@a279aa1 (another H100)" \
  "$R/eval_llama-3-8b_g128_compiled_04b9357_h100_fold.json@04b9357" \
  "$R/eval_llama-3-8b_g128_compiled_04b9357_h100_fold_b1.json@04b9357 (same machine)" \
  "$R/eval_llama-3-8b_g128_compiled_04b9357_h100_nofold.json@04b9357 (same machine)" \
  "$R/eval_llama-3-8b_g128_compiled_04b9357_h100_fold_unfused.json@04b9357 (same machine)" \
  "$R/eval_llama-3-8b_g128_compiled_7716e73_h100.json@7716e73" \
  "$R/eval_llama-3-8b_g128_compiled_lm_head_7716e73_h100.json@7716e73 (same machine)" \
  "$R/eval_llama-3-8b_g128_compiled_df03aba_h100_pdl.json@df03aba" \
  "$R/eval_llama-3-8b_g128_compiled_df03aba_h100_attention_pdl.json@df03aba (same machine)" \
  "$R/eval_llama-3-8b_g128_compiled_df03aba_h100_base.json@df03aba (same machine)" \
  "$R/eval_llama-3-8b_g128_compiled_ea58d9e_h100_glu_ws.json@ea58d9e" \
  "$R/eval_llama-3-8b_g128_compiled_ea58d9e_h100_ws_off.json@ea58d9e (same machine)" \
  "$R/eval_llama-3-8b_g128_compiled_lm_head_ea58d9e_h100_glu_ws.json@ea58d9e (same machine)" \
  "$R/eval_llama-3-8b_g128_compiled_7882e82_h100_glu.json@7882e82" \
  "$R/eval_llama-3-8b_g128_compiled_7882e82_h100_glu_off.json@7882e82 (same machine)" \
  "$R/eval_llama-3-8b_g128_compiled_546da8d_h100_combo.json@546da8d" \
  "$R/eval_llama-3-8b_g128_compiled_546da8d_h100.json@546da8d" \
  "$R/eval_llama-3-8b_g128_compiled_546da8d_h100_combo_2.json@546da8d (same machine, again)" \
  "$R/eval_llama-3-8b_g128_compiled_546da8d_h100_2.json@546da8d (same machine, again)" \
  "$R/eval_llama-3-8b_g32_compiled_546da8d_h100_combo.json@546da8d" \
  "$R/eval_llama-3-8b_g128_compiled_721b2c1_h100_pair.json@721b2c1" \
  "$R/eval_llama-3-8b_g128_compiled_7b0b2c8_h100.json@7b0b2c8" \
  "$R/eval_llama-3-8b_g32_compiled_721b2c1_h100_pair.json@721b2c1" \
  "$R/eval_llama-3-8b_g32_compiled_721b2c1_h100.json@721b2c1 (another H100)" \
  "$R/eval_llama-3-8b_g128.json@c0e6b5b" \
  "$R/eval_llama-3-8b_g128_compiled.json@c0e6b5b" \
  "$R/eval_llama-3-8b_g128_compiled_lm_head.json@1222e9f" \
  "$R/eval_llama-3-8b_g32.json@c0e6b5b" \
  > $R/eval_speed.md
$PY bench/profile_table.py \
  "eee3a1d, QUANTKIT_ROPE_IN_ATTENTION=1 QUANTKIT_GREEDY_ONE_LAUNCH=1 (rope in the quantized model only)=$R/decode_profile_h100_eee3a1d_both.json" \
  "eee3a1d (same machine)=$R/decode_profile_h100_eee3a1d_default.json" \
  "fea6522 (another H100)=$R/decode_profile_h100_fea6522.json" \
  "0d70d44 (another H100)=$R/decode_profile_h100_0d70d44.json" \
  "df03aba=$R/decode_profile_pdl_df03aba_h100.json" \
  "ea58d9e=$R/decode_profile_glu_ea58d9e_h100.json" \
  "546da8d, inductor's combo kernels (QUANTKIT_COMBO_KERNELS=1; its JSON predates recording it)=$R/decode_profile_h100_combo_546da8d.json" \
  "session 11=$R/decode_profile_h100_sdpa.json" \
  "session 11=$R/decode_profile_h100_grouped.json" \
  "session 11=$R/decode_profile_h100_compiled.json" \
  "cce997b=$R/decode_profile_h100_cce997b.json" \
  "1052597 (batches of 2, since reverted)=$R/decode_profile_h100_pf2.json" \
  "1052597 (batches of 2, since reverted)=$R/decode_profile_h100_fused_pf2.json" \
  "7b0b2c8=$R/decode_profile_h100_pipe_7b0b2c8.json" \
  "721b2c1=$R/decode_profile_h100_721b2c1.json" \
  > $R/decode_profile_h100.md
$PY bench/update_readme.py
