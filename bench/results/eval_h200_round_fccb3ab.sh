set -u
. bench/device_env.sh
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
O=$OUT/b; mkdir -p $O
s=$(date +%s)
python3 -c "from quantkit.kernels import kernel_available, self_check; print(kernel_available()); self_check()" > $O/build.log 2>&1
echo "build rc $? $(( $(date +%s) - s )) s" >> $O/build.log; tail -1 $O/build.log
STEPS=compiled COMPILED_BATCH=8,32 bash bench/eval_speed.sh $OUT/on $(( 420 - ($(date +%s) - s) )) > $O/eval_on.log 2>&1
echo "eval on rc $? at $(( $(date +%s) - s )) s"; grep -A4 "| batch" $OUT/on/*.md | head -6
QUANTKIT_COMPILED_X_IMAGE=0 STEPS=compiled COMPILED_BATCH=32 bash bench/eval_speed.sh $OUT/off $(( 585 - ($(date +%s) - s) )) > $O/eval_off.log 2>&1
echo "eval off rc $? at $(( $(date +%s) - s )) s"; grep -A4 "| batch" $OUT/off/*.md | head -6
tar -C $OUT -czf $OUT/b.tgz b on off && rm -rf $O $OUT/on $OUT/off
