set -u
. bench/device_env.sh
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
s=$(date +%s)
STEPS=compiled COMPILED_BATCH=32 bash bench/eval_speed.sh $OUT/on 420 > $OUT/eval_on.log 2>&1
echo "eval on rc $? at $(( $(date +%s) - s )) s"; grep -A3 "| batch" $OUT/on/*.md | head -4
tar -C $OUT -czf $OUT/c.tgz on eval_on.log && rm -rf $OUT/on $OUT/eval_on.log
