set -u
. bench/device_env.sh
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
O=$OUT/a; mkdir -p $O
s=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "from quantkit.kernels import kernel_available, self_check; print(kernel_available()); self_check()" > $O/build.log 2>&1
echo "build rc $? $(( $(date +%s) - s )) s" >> $O/build.log; tail -1 $O/build.log
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_eval_gpu.py tests/test_kernels_gpu.py::test_x_image_feeds_the_ws_kernel tests/test_kernels_gpu.py::test_wgmma_pack_x_writes_the_swizzled_image > $O/tests.log 2>&1; echo "tests rc $? at $(( $(date +%s) - s )) s"; tail -3 $O/tests.log
timeout 90 python3 bench/decode_attention_bench.py --out $O/decode_attention.json > $O/decode_attention.log 2>&1
echo "attn bench rc $? at $(( $(date +%s) - s )) s"; cat $O/decode_attention.log
timeout $(( 570 - ($(date +%s) - s) )) python3 bench/profile_decode.py --compile --fuse --x-image both --batch 8,32 --out $O/decode_profile.json > $O/decode_profile.log 2>&1
echo "profile rc $? at $(( $(date +%s) - s )) s"; grep "batch" $O/decode_profile.log | grep step
tar -C $OUT -czf $OUT/a.tgz a && rm -rf $O
