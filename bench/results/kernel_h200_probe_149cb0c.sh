set -u
. bench/device_env.sh
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
O=$OUT/p; mkdir -p $O
nvidia-smi > $O/smi.txt
s=$(date +%s)
python3 -c "from quantkit.kernels import kernel_available, self_check; print(kernel_available()); self_check()" > $O/build.log 2>&1
echo "build rc $? $(( $(date +%s) - s )) s" >> $O/build.log
NCU=/usr/local/cuda/bin/ncu
prof() { name=$1; shift; timeout 100 $NCU --clock-control none -k regex:qk_ --launch-skip 6 --launch-count 2 --section SpeedOfLight --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis python3 bench/kernel_ncu.py --calls 8 "$@" > $O/ncu_$name.txt 2>&1; echo "$name rc $?"; }
prof 4096x14336_m512_sk --n 4096 --k 14336 --m 512
prof 4096x14336_m512_grid256 --n 4096 --k 14336 --m 512 --backend wgmma --ws --bt 256 --grid
prof 28672x8192_m512_sk --n 28672 --k 8192 --m 512
prof 4096x4096_m512_sk --n 4096 --k 4096 --m 512 --backend wgmma --ws --stream-k
prof 4096x4096_m512_dequant --n 4096 --k 4096 --m 512 --backend dequant
prof 4096x14336_m128_sk --n 4096 --k 14336 --m 128
timeout 200 python3 bench/kernel_bench.py --out $O/tune.json --reps 20 --ms 256,512,1024 --groups 128 --shapes "4096x4096;6144x4096;4096x14336;28672x4096" --tune > $O/tune.log 2>&1
echo "tune rc $?"
tar -C $OUT -czf $OUT/p.tgz p && rm -rf $O
