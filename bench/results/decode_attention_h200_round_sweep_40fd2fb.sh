set -u
. bench/device_env.sh
O=$OUT/b; mkdir -p $O
s=$(date +%s)
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_eval_gpu.py -k "split_kv_decode_matches" > $O/tests.log 2>&1; echo "tests rc $? at $(( $(date +%s) - s )) s"; tail -3 $O/tests.log
timeout $(( 560 - ($(date +%s) - s) )) python3 bench/decode_attention_bench.py --sweep --out $O/decode_attention_sweep.json > $O/decode_attention_sweep.log 2>&1
echo "sweep rc $? at $(( $(date +%s) - s )) s"; grep "fastest\|sdpa\|split:" $O/decode_attention_sweep.log
tar -C $OUT -czf $OUT/b.tgz b && rm -rf $O
