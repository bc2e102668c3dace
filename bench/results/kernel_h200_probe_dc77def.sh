set -u
. bench/device_env.sh
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
O=$OUT/p; mkdir -p $O
s=$(date +%s)
python3 -c "from quantkit.kernels import kernel_available, self_check; print(kernel_available()); self_check()" > $O/build.log 2>&1
echo "build rc $? $(( $(date +%s) - s )) s" >> $O/build.log; tail -1 $O/build.log
timeout 300 python3 bench/kernel_bench.py --out $O/tune.json --reps 20 --tune --ms 256,512,1024 --groups 128 --shapes "6144x4096;4096x4096;28672x4096;4096x14336" > $O/tune.log 2>&1
echo "tune rc $? at $(( $(date +%s) - s )) s"; grep "N=" $O/tune.log | cut -c1-160
tar -C $OUT -czf $OUT/p.tgz p && rm -rf $O
