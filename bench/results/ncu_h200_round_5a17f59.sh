# Session 33's first device call on 5a17f59 (NVIDIA H200): where the decode-sized kernels stall, by Nsight Compute.
# Builds and self-checks the kernels (bench/device_env.sh, QUANTKIT_KERNEL_CACHE), then profiles one call of each:
#   ws32:  the warp-specialized kernel at 32 tokens, stream-K (the eval's gate/up at batch 32), 28672x4096, M = 32
#   s4:    the decode kernel, 4 token tiles, warps sharing a tile (q/k/v at batch 32), 6144x4096, M = 32
#   s1:    the decode kernel at M = 1 (gate/up at batch 1), 28672x4096
# each with the stall reasons per issued instruction and the usual sections (ncu_h200_<name>_5a17f59.txt), and ws32
# and s1 also as a report whose SASS page gives the stall samples per instruction (ncu_h200_<name>_sass_5a17f59.csv).
#     bash bench/results/ncu_h200_round_5a17f59.sh $OUT
set -u
OUT=${1:?usage: ncu_h200_round_5a17f59.sh OUT_DIR}
. bench/device_env.sh
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.csv"
start=$(date +%s)
python3 -c "from quantkit.kernels import kernel_available, self_check; print(kernel_available()); self_check()" \
  > "$OUT/build.log" 2>&1
echo "build and self-check: rc $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/build.log"
STALLS='regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'
SECTIONS="--section SpeedOfLight --section ComputeWorkloadAnalysis --section SchedulerStats --section WarpStateStats
          --section Occupancy --section LaunchStats --section InstructionStats --section MemoryWorkloadAnalysis"
profile() {  # profile NAME KERNEL_REGEX SASS(0/1) kernel_ncu.py args...
  local name=$1 regex=$2 sass=$3; shift 3
  local t0=$(date +%s)
  timeout 150 ncu --clock-control none --profile-from-start off -k "regex:$regex" --launch-skip 3 --launch-count 1 \
    $SECTIONS --metrics "$STALLS" --print-details all python3 bench/kernel_ncu.py "$@" > "$OUT/ncu_h200_${name}.txt" 2>&1
  echo "== $name: rc $? in $(( $(date +%s) - t0 )) s"
  if [ "$sass" = 1 ]; then
    timeout 150 ncu --clock-control none --profile-from-start off -k "regex:$regex" --launch-skip 3 --launch-count 1 \
      --section WarpStateStats --section SourceCounters --import-source no -o "$OUT/$name" -f \
      python3 bench/kernel_ncu.py "$@" > "$OUT/ncu_${name}_rep.log" 2>&1
    ncu -i "$OUT/$name.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu_h200_${name}_sass.csv" 2>&1
    echo "== $name sass: rc $? ($(wc -c < "$OUT/ncu_h200_${name}_sass.csv") bytes)"
    gzip -f "$OUT/$name.ncu-rep"
  fi
}
profile ws32 qk_wgmma_ws 1 --n 28672 --k 4096 --m 32
profile s4 qk_mma_stream 0 --n 6144 --k 4096 --m 32
profile s1 qk_mma_stream 1 --n 28672 --k 4096 --m 1
echo "== done in $(( $(date +%s) - start )) s"
