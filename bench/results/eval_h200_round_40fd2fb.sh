set -u
. bench/device_env.sh
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
O=$OUT/c; mkdir -p $O
s=$(date +%s)
python3 -c "from quantkit.kernels import kernel_available, self_check; print(kernel_available()); self_check()" > $O/build.log 2>&1
echo "build rc $? $(( $(date +%s) - s )) s" >> $O/build.log; tail -1 $O/build.log
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_eval_gpu.py > $O/test_eval_gpu.log 2>&1; echo "tests rc $? at $(( $(date +%s) - s )) s"; tail -2 $O/test_eval_gpu.log
STEPS=compiled COMPILED_BATCH=1,8,32 bash bench/eval_speed.sh $OUT/eval $(( 580 - ($(date +%s) - s) )) > $OUT/eval_run.log 2>&1
echo "eval rc $? at $(( $(date +%s) - s )) s"; grep -A5 "| batch" $OUT/eval/*.md | head -8
tar -C $OUT -czf $OUT/c.tgz c eval eval_run.log && rm -rf $O $OUT/eval $OUT/eval_run.log
