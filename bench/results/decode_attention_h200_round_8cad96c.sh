set -u
. bench/device_env.sh
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
O=$OUT/d; mkdir -p $O
s=$(date +%s)
python3 -c "from quantkit.kernels import kernel_available, self_check; print(kernel_available()); self_check()" > $O/build.log 2>&1
echo "build rc $? $(( $(date +%s) - s )) s" >> $O/build.log; tail -1 $O/build.log
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_eval_gpu.py > $O/tests.log 2>&1; echo "tests rc $? at $(( $(date +%s) - s )) s"; tail -3 $O/tests.log
timeout 60 python3 bench/decode_attention_bench.py --out $O/decode_attention.json > $O/decode_attention.log 2>&1
echo "attn bench rc $? at $(( $(date +%s) - s )) s"; cat $O/decode_attention.log
timeout $(( 480 - ($(date +%s) - s) )) python3 bench/decode_attention_bench.py --cache 4096 --out $O/decode_attention_cache4096.json > $O/decode_attention_cache4096.log 2>&1
echo "attn bench 4096 rc $? at $(( $(date +%s) - s )) s"; cat $O/decode_attention_cache4096.log
tar -C $OUT -czf $OUT/d.tgz d && rm -rf $O
