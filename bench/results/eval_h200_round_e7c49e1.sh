set -u
. bench/device_env.sh
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
O=$OUT/b; mkdir -p $O
s=$(date +%s)
python3 -c "from quantkit.kernels import kernel_available, self_check; print(kernel_available()); self_check()" > $O/build.log 2>&1
echo "build rc $? $(( $(date +%s) - s )) s" >> $O/build.log; tail -1 $O/build.log
timeout 60 python3 bench/decode_attention_bench.py --out $O/decode_attention.json > $O/decode_attention.log 2>&1
echo "attn bench rc $? at $(( $(date +%s) - s )) s"; cat $O/decode_attention.log
STEPS=compiled COMPILED_BATCH=1,8,32 bash bench/eval_speed.sh $OUT/eval $(( 590 - ($(date +%s) - s) )) > $O/eval.log 2>&1
echo "eval rc $? at $(( $(date +%s) - s )) s"; grep -A5 "| batch" $OUT/eval/*.md | head -8
tar -C $OUT -czf $OUT/b.tgz b eval && rm -rf $O $OUT/eval
