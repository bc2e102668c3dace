set -u
. bench/device_env.sh
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $O/smi.csv
s=$(date +%s)
python3 -c "from quantkit.kernels import kernel_available, self_check; print(kernel_available()); self_check()" > $O/build.log 2>&1
echo "build rc $? $(( $(date +%s) - s )) s" >> $O/build.log
timeout 90 python3 -m pytest -q -rs -p no:cacheprovider tests/test_kernels_gpu.py tests/test_eval_gpu.py > $O/gpu_tests.log 2>&1; echo "tests rc $?"; tail -1 $O/gpu_tests.log
NCU=/usr/local/cuda/bin/ncu
M="sm__cycles_active.min,sm__cycles_active.max,sm__cycles_active.avg,gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"
prof() { name=$1; k=$2; shift 2; timeout 80 $NCU --clock-control none -k regex:$k --launch-skip 3 --launch-count 1 --metrics "$M" python3 bench/kernel_ncu.py --calls 5 "$@" > $O/ncu_$name.txt 2>&1; echo "$name rc $?"; grep gpu__time $O/ncu_$name.txt; }
prof pack_4096x14336_m512 pack_x --n 4096 --k 14336 --m 512 --backend wgmma --ws --bt 256 --grid
prof pack_4096x4096_m512 pack_x --n 4096 --k 4096 --m 512 --backend wgmma --ws --bt 256 --grid
timeout 120 python3 bench/kernel_bench.py --out $O/prefill.json --reps 20 --ms 16,32,256,512,1024 --groups 128 --shapes "4096x4096;6144x4096;4096x14336;28672x4096" > $O/prefill.log 2>&1
echo "prefill bench rc $?"
timeout 150 python3 bench/kernel_bench.py --out $O/kernel_bench.json --reps 20 --ms 1,2,4,8,16,32,64,128,256,512,1024,2048 > $O/kernel_bench.log 2>&1
echo "full bench rc $?"
tar -C $OUT -czf $OUT/r.tgz r && rm -rf $O
