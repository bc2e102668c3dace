set -u
. bench/device_env.sh
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache TRITON_CACHE_DIR=$OUT/a/tcache
O=$OUT/a; mkdir -p $O
s=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import triton; print('triton', triton.__version__)"
python3 -c "from quantkit.kernels import kernel_available, self_check; print(kernel_available()); self_check()" > $O/build.log 2>&1
echo "build rc $? $(( $(date +%s) - s )) s" >> $O/build.log; tail -1 $O/build.log
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_eval_gpu.py > $O/tests.log 2>&1; echo "tests rc $? at $(( $(date +%s) - s )) s"; tail -3 $O/tests.log
for f in $(grep -l "_split_kv_partial" -r $O/tcache --include=*.ttgir 2>/dev/null); do echo "$f async copies: $(grep -c async_copy_global_to_local $f) MASK_BOUND-scan: $(grep -c 'tt.reduce' $f)"; done
timeout 120 python3 bench/decode_attention_bench.py --out $O/decode_attention.json > $O/decode_attention.log 2>&1
echo "attn bench rc $? at $(( $(date +%s) - s )) s"; cat $O/decode_attention.log
timeout 120 python3 bench/decode_attention_bench.py --cache 4096 --out $O/decode_attention_cache4096.json > $O/decode_attention_cache4096.log 2>&1
echo "attn bench 4096 rc $? at $(( $(date +%s) - s )) s"; cat $O/decode_attention_cache4096.log
rm -rf $O/tcache
tar -C $OUT -czf $OUT/a.tgz a && rm -rf $O
