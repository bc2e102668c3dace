# Session 33's third device call, on this commit's tree but for the chunked test's fix (kernel_h200_lean_s33b.json,
# kernel_h200_tests_lean_s33b.log: 67 passed, decode_profile_h200_lean_s33b.json): the device call on the leaner wgmma issue (32-bit descriptor adds), one-permute scale splats and the
# warp-specialized consumers' whole-stage fast path (NVIDIA H200):
#   1. build and self-check (build.log); 2. every GPU kernel test (gpu_tests.log);
#   3. the kernel benchmark at M = 1, 16, 32, 64 and 256 (kernel_bench.json, with the chunked instance beside the plain);
#   4. the decode step at batch 32, eager, fused projections (profile.json).
# Everything under OUT_DIR/round.tgz.
#     bash bench/results/lean_h200_round.sh OUT_DIR [DEADLINE_SECONDS]
set -u
OUT=${1:?usage: lean_h200_round.sh OUT_DIR [DEADLINE_SECONDS]}
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
run gpu_tests 150 python3 -m pytest -q -rs -p no:cacheprovider tests/test_kernels_gpu.py
run kernel_bench 200 python3 bench/kernel_bench.py --out "$R/kernel_bench.json" --reps 20 --ms 1,16,32,64,256 \
  --groups 128 --shapes "28672x4096;6144x4096;4096x4096;14336x4096;4096x14336;28672x8192;8192x28672"
run profile 120 python3 bench/profile_decode.py --fuse --batch 32 --out "$R/profile.json"
tar -C "$OUT" -czf "$OUT/round.tgz" round && rm -rf "$R"
echo "== done ($(left) s left)"
