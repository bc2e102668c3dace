set -u
. bench/device_env.sh
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
O=$OUT/p; mkdir -p $O
python3 bench/pack_bench.py --out $O/pack.json > $O/pack.log 2>&1; echo "pack bench rc $?"; grep "M " $O/pack.log; tail -3 $O/pack.log
STEPS=compiled COMPILED_BATCH=1,8,32 bash bench/eval_speed.sh $OUT/eval 500 > $OUT/eval_run.log 2>&1
echo "eval rc $?"; tail -5 $OUT/eval_run.log
tar -C $OUT -czf $OUT/eval.tgz eval eval_run.log p && rm -rf $OUT/eval $O
