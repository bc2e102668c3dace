# Session 33's second device call (the first, an Nsight Compute round, was refused and its script not kept) on the working tree of
# 5a17f59 plus the chunked instance (the tree of the commit that adds this file, before its leaner issue and the fixed
# test; kernel_h200_chunked_s33a.json, kernel_h200_ncu_ws32_{plain,chunked}_s33a.txt, kernel_h200_tests_chunked_s33a.log:
# the test's two failures were its own, fixed since; the decode profiles did not come back: the tool returns 8 files):
# the device call for the warp-specialized kernel's chunked instance (qk_wgmma_ws's CH: 32 tokens a block,
# each chunk's MMAs issued as it is dequantized, two blocks a multiprocessor), on an NVIDIA H200:
#   1. build and self-check (build.log);
#   2. the GPU tests of the warp-specialized kernel (gpu_tests.log: -k "ws or chunked");
#   3. the kernel benchmark at M = 16 and 32 on the layers where that kernel runs, the plain and the chunked instance
#      side by side (kernel_bench.json: contenders qk_wgmma_ws_sk_bt32_plain and qk_wgmma_ws_sk_bt32_ch);
#   4. Nsight Compute of both instances on 28672x4096 at M = 32 (the eval's gate/up at batch 32), stall reasons per
#      issued instruction (ncu_ws32_{plain,ch}.txt);
#   5. the decode step at batch 32 (eager, fused projections), plain and chunked (profile_{plain,ch}.json).
#     bash bench/results/chunked_h200_round.sh OUT_DIR [DEADLINE_SECONDS]
set -u
OUT=${1:?usage: chunked_h200_round.sh OUT_DIR [DEADLINE_SECONDS]}
DEADLINE=$(( $(date +%s) + ${2:-570} ))
left() { echo $(( DEADLINE - $(date +%s) )); }
. bench/device_env.sh
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.csv"
git log -1 --format='%H %s' 2>/dev/null | tee "$OUT/commit.txt"
start=$(date +%s)
python3 -c "from quantkit.kernels import kernel_available, self_check; print(kernel_available()); self_check()" \
  > "$OUT/build.log" 2>&1
echo "build and self-check: rc $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/build.log"
run() {  # run NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  [ "$limit" -gt "$(( $(left) - 5 ))" ] && limit=$(( $(left) - 5 ))
  [ "$limit" -lt 15 ] && { echo "== $name: no time left"; return; }
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: rc $? in $(( $(date +%s) - t0 )) s"; tail -n 2 "$OUT/$name.log"
}
run gpu_tests 100 python3 -m pytest -q -rs -p no:cacheprovider tests/test_kernels_gpu.py -k "ws or chunked"
run kernel_bench 150 python3 bench/kernel_bench.py --out "$OUT/kernel_bench.json" --reps 20 --ms 16,32 --groups 128 \
  --shapes "28672x4096;14336x4096;4096x14336;28672x8192;8192x28672"
STALLS='regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'
for ch in plain ch; do
  flag=$([ $ch = ch ] && echo --chunked || echo)
  run ncu_ws32_$ch 60 ncu --clock-control none --profile-from-start off -k regex:qk_wgmma_ws --launch-skip 3 \
    --launch-count 1 --section SpeedOfLight --section ComputeWorkloadAnalysis --section SchedulerStats \
    --section WarpStateStats --section Occupancy --section LaunchStats --metrics "$STALLS" \
    python3 bench/kernel_ncu.py --n 28672 --k 4096 --m 32 --backend wgmma --ws --stream-k $flag
done
for ch in plain ch; do
  run profile_$ch 110 python3 -c "
import runpy, sys
from quantkit.kernels import ops
ops.WS_CHUNKED = frozenset({32}) if '$ch' == 'ch' else frozenset()
sys.argv = ['bench/profile_decode.py', '--fuse', '--batch', '32', '--out', '$OUT/profile_$ch.json']
runpy.run_path('bench/profile_decode.py', run_name='__main__')"
done
echo "== done ($(left) s left)"
