#!/usr/bin/env bash
# Session 37's third device call (nvidia-h100-x1): issue 7's compiled runs of group 128 and group 32 one after the
# other on the same machine (the bf16 model's own tokens/s moved by 4% between session 36's machine and this
# session's second call, so the two groups are compared within one call):
#   bench/eval_speed.sh, STEPS=compiled, COMPILED_BATCH=1,8,32, COMPILED_GROUP=128 then 32 (the second call finds the
#   first's build in the kernel cache).
#     bash bench/results/h100_eval_pair_round.sh OUT_DIR [SECONDS]   (ends within SECONDS, default 585;
#     OUT_DIR/pair.tgz: g128/ and g32/, each eval_llama-3-8b_g{128,32}_compiled.{json,md,png,log} and the self-check)
# As run in session 37 the group-128 step's 260 s were too few on a fresh machine (the build first): its eval stopped
# in the last of its six throughput runs. The group-32 step completed (eval_llama-3-8b_g32_compiled_721b2c1_h100_pair.*),
# and a fourth call on the same machine, still warm, ran the group-128 one again on its own
# (eval_llama-3-8b_g128_compiled_721b2c1_h100_pair.*):
#     STEPS=compiled COMPILED_GROUP=128 COMPILED_BATCH=1,8,32 bash bench/eval_speed.sh OUT_DIR/g128 370
set -u
OUT=${1:?usage: h100_eval_pair_round.sh OUT_DIR [SECONDS]}
TOTAL=${2:-585}
T0=$(date +%s)
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
STEPS=compiled COMPILED_GROUP=128 COMPILED_BATCH=1,8,32 COMPILED_LIMIT=260 bash bench/eval_speed.sh "$OUT/g128" 330
STEPS=compiled COMPILED_GROUP=32 COMPILED_BATCH=1,8,32 bash bench/eval_speed.sh "$OUT/g32" $(( $(left) - 5 ))
tar -C "$OUT" -czf "$OUT/pair.tgz" g128 g32 && rm -rf "$OUT/g128" "$OUT/g32"
echo "== pair done ($(left) s left)"
