# Sourced by the A/B round scripts (cache_position_round.sh, launches_round.sh): "round_start PREFIX OUT_DIR STEP" makes
# D=OUT_DIR/PREFIX<STEP>, "eval_at NAME BATCH SECONDS" runs the compiled eval at one batch into D/eval_NAME (the
# environment says which side), "round_end" packs D into OUT_DIR/PREFIX<STEP>.tgz.
round_start() {
  PREFIX=$1 OUT=$2 STEP=$3
  D="$OUT/$PREFIX$STEP"
  mkdir -p "$D"
}
eval_at() {
  STEPS=compiled COMPILED_BATCH=$2 bash bench/eval_speed.sh "$D/eval_$1" "$3" 2>&1 | grep -v "quantizing" | tail -9
}
round_end() {
  tar -C "$OUT" -czf "$D.tgz" "$PREFIX$STEP" && rm -rf "$D"
  echo "== $PREFIX$STEP done"
}
