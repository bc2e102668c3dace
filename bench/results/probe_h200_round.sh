# Session 33's fifth device call (NVIDIA H200), on d4b7c2a (kernel_h200_probe_d4b7c2a.json, kernel_h200_tests_d4b7c2a.log,
# kernel_h200_ncu_ws32_{kernel,probe1,probe2,probe3}_d4b7c2a.txt): how fast the warp-specialized kernel streams a layer
# when its consumers do less (ops.ws_probe), against the kernel itself, at the decode-sized tiles. (The fourth call ran
# it on b80a291 with level 3 added; ptxas had dropped levels 2 and 3's work there, so they measured level 1: not kept.)
#   1. build and self-check; 2. every GPU kernel test (gpu_tests.log);
#   3. the kernel benchmark at M = 1, 16, 32 with --ws-probe (kernel_bench.json: probe_ws_{wait,read,dequant} and
#      qk_wgmma_ws_sk_bt16 / bt32 beside the dispatched kernel);
#   4. Nsight Compute of the kernel and of each probe level on 28672x4096 at M = 32 (ncu_{kernel,probe1,probe2,probe3}.log).
# Everything under OUT_DIR/round.tgz.
#     bash bench/results/probe_h200_round.sh OUT_DIR [DEADLINE_SECONDS]
set -u
OUT=${1:?usage: probe_h200_round.sh OUT_DIR [DEADLINE_SECONDS]}
DEADLINE=$(( $(date +%s) + ${2:-570} ))
R=$OUT/round
mkdir -p "$R"
left() { echo $(( DEADLINE - $(date +%s) )); }
. bench/device_env.sh
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$R/nvidia-smi.csv"
start=$(date +%s)
python3 -c "from quantkit.kernels import kernel_available, self_check; print(kernel_available()); self_check()" \
  > "$R/build.log" 2>&1
echo "build and self-check: rc $? in $(( $(date +%s) - start )) s" | tee -a "$R/build.log"
run() {  # run NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  [ "$limit" -gt "$(( $(left) - 10 ))" ] && limit=$(( $(left) - 10 ))
  [ "$limit" -lt 15 ] && { echo "== $name: no time left"; return; }
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$R/$name.log" 2>&1
  echo "== $name: rc $? in $(( $(date +%s) - t0 )) s"; tail -n 2 "$R/$name.log"
}
run gpu_tests 120 python3 -m pytest -q -rs -p no:cacheprovider tests/test_kernels_gpu.py
run kernel_bench 150 python3 bench/kernel_bench.py --out "$R/kernel_bench.json" --reps 20 --ms 1,16,32 --groups 128 \
  --ws-probe --shapes "28672x4096;14336x4096;4096x14336;28672x8192;8192x28672"
STALLS='regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'
for p in 0 1 2 3; do
  run ncu_$([ $p = 0 ] && echo kernel || echo probe$p) 60 ncu --clock-control none --profile-from-start off \
    -k regex:qk_wgmma_ws --launch-skip 3 --launch-count 1 --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section SchedulerStats --section WarpStateStats --section MemoryWorkloadAnalysis --metrics "$STALLS" \
    python3 bench/kernel_ncu.py --n 28672 --k 4096 --m 32 --backend wgmma --ws --stream-k --bt 32 --probe $p
done
tar -C "$OUT" -czf "$OUT/round.tgz" round && rm -rf "$R"
echo "== done ($(left) s left)"
