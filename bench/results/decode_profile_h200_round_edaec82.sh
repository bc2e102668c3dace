set -u
. bench/device_env.sh
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
O=$OUT/d; mkdir -p $O
s=$(date +%s)
python3 -c "from quantkit.kernels import kernel_available, self_check; print(kernel_available()); self_check()" > $O/build.log 2>&1
echo "build rc $? $(( $(date +%s) - s )) s" >> $O/build.log; tail -1 $O/build.log
timeout $(( 570 - ($(date +%s) - s) )) python3 bench/profile_decode.py --compile --fuse --pdl both --batch 1,8,32 --out $O/decode_profile.json > $O/decode_profile.log 2>&1
echo "profile rc $? at $(( $(date +%s) - s )) s"; grep "batch" $O/decode_profile.log | grep step
tar -C $OUT -czf $OUT/d.tgz d && rm -rf $O
