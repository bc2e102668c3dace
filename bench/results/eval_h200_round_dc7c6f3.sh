set -u
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
STEPS=compiled COMPILED_BATCH=1,8,32 bash bench/eval_speed.sh $OUT/eval 560 > $OUT/eval_run.log 2>&1
echo "eval rc $?"; tail -5 $OUT/eval_run.log
tar -C $OUT -czf $OUT/eval.tgz eval eval_run.log && rm -rf $OUT/eval
