set -u
. bench/device_env.sh
O=$OUT/e; mkdir -p $O
s=$(date +%s)
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_eval_gpu.py -k "split_kv_decode_matches" > $O/tests.log 2>&1; echo "tests rc $? at $(( $(date +%s) - s )) s"; tail -1 $O/tests.log
timeout 70 python3 bench/decode_attention_bench.py --out $O/decode_attention.json > $O/decode_attention.log 2>&1
echo "bench rc $? at $(( $(date +%s) - s )) s"; grep "batch" $O/decode_attention.log
timeout 70 python3 bench/decode_attention_bench.py --cache 4096 --out $O/decode_attention_cache4096.json > $O/decode_attention_cache4096.log 2>&1
echo "bench 4096 rc $? at $(( $(date +%s) - s )) s"; grep "batch" $O/decode_attention_cache4096.log
timeout $(( 300 - ($(date +%s) - s) )) python3 bench/decode_attention_bench.py --sweep --out $O/decode_attention_sweep.json > $O/decode_attention_sweep.log 2>&1
echo "sweep rc $? at $(( $(date +%s) - s )) s"; grep "fastest\|sdpa:\|split:" $O/decode_attention_sweep.log
tar -C $OUT -czf $OUT/e.tgz e && rm -rf $O
