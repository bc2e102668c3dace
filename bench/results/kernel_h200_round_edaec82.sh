set -u
. bench/device_env.sh
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $O/smi.csv
s=$(date +%s)
python3 -c "from quantkit.kernels import kernel_available, self_check; print(kernel_available()); self_check()" > $O/build.log 2>&1
echo "build rc $? $(( $(date +%s) - s )) s" >> $O/build.log; tail -1 $O/build.log
timeout 120 python3 -m pytest -q -rs -p no:cacheprovider tests/test_kernels_gpu.py tests/test_eval_gpu.py > $O/gpu_tests.log 2>&1; echo "tests rc $?"; tail -3 $O/gpu_tests.log
timeout 90 python3 bench/pack_bench.py --out $O/pack.json > $O/pack.log 2>&1; echo "pack bench rc $?"; grep "M " $O/pack.log
timeout 130 python3 bench/kernel_bench.py --out $O/prefill.json --reps 20 --ms 64,128,256,512,1024 --groups 128 --shapes "4096x4096;6144x4096;14336x4096;4096x14336;28672x4096" > $O/prefill.log 2>&1
echo "prefill bench rc $? at $(( $(date +%s) - s )) s"; grep "N=" $O/prefill.log | cut -c1-160
left=$(( 560 - ($(date +%s) - s) ))
echo "full bench gets $left s"
timeout $left python3 bench/kernel_bench.py --out $O/kernel_bench.json --reps 20 --ms 1,2,4,8,16,32,64,128,256,512,1024,2048 > $O/kernel_bench.log 2>&1
echo "full bench rc $? at $(( $(date +%s) - s )) s"
tar -C $OUT -czf $OUT/r.tgz r && rm -rf $O
