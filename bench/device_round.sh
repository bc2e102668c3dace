#!/usr/bin/env bash
# One device call after a kernel change: builds the extension (timed) and self-checks it, then the steps of STEPS
# in order (default "tests bench profile"): tests, the GPU kernel and eval tests (and the CPU build of the RDNA3 kernels
# against the GPU's bits); probe, the read-only access-pattern
# probe (bench/stream_probe.py); bench, every kernel against cuBLAS and torch's int4 kernel (bench/kernel_bench.py;
# KERNEL_ARGS replaces its default arguments, the full table); profile, whole decode steps (bench/profile_decode.py,
# one profile per option set in PROFILES, each within PROFILE_LIMIT seconds, default 240).
#
#     bash bench/device_round.sh OUT_DIR [DEADLINE_SECONDS]
#
# Leaves OUT_DIR/round.tgz (every log and JSON) and the built library (*.so, to carry into the next call under
# .qkcache/<its name>/ so that it loads without a build): two files, within the device tool's limits.
set -u -o pipefail
OUT=${1:?usage: bench/device_round.sh OUT_DIR [DEADLINE_SECONDS]}
DEADLINE=$(( $(date +%s) + ${2:-560} ))
R="$OUT/round"
mkdir -p "$R"
left() { echo $(( DEADLINE - $(date +%s) )); }
. "$(dirname "$0")/device_env.sh"
export QUANTKIT_KERNEL_CACHE=${QUANTKIT_KERNEL_CACHE:-$PWD/.qkcache}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$R/nvidia-smi.csv"
echo "${COMMIT:-$(git log -1 --format='%H %s' 2>/dev/null)}" | tee "$R/commit.txt"  # COMMIT: when .git is not current

start=$(date +%s)
# a build takes 100-200 s on the H200 machine
timeout $(( $(left) - 60 < 400 ? $(left) - 60 : 400 )) python3 -c "
import logging, sys; logging.basicConfig(level=logging.INFO)
from quantkit.kernels import kernel_available, self_check
ok, why = kernel_available(); print('kernel_available', ok, why)
sys.exit(1) if not ok else self_check()" > "$R/build.log" 2>&1
build_rc=$?
echo "build and self-check: rc $build_rc in $(( $(date +%s) - start )) s" | tee -a "$R/build.log"
[ "$build_rc" -ne 0 ] && STEPS=none  # every step needs the kernels: none would do more than build again
cp "$QUANTKIT_KERNEL_CACHE"/*/*.so "$OUT/" 2>/dev/null

step() {  # step NAME SECONDS COMMAND...: one step under its own timeout, its output in round/NAME.log
  local name=$1 limit=$2; shift 2
  [ "$limit" -gt "$(( $(left) - 5 ))" ] && limit=$(( $(left) - 5 ))
  [ "$limit" -lt 20 ] && { echo "== $name: no time left" | tee "$R/$name.log"; return; }
  echo "== $name ($(left) s left, limit $limit s)"
  timeout "$limit" "$@" > "$R/$name.log" 2>&1
  echo "== $name: rc $?"; tail -n 3 "$R/$name.log"
}
for what in ${STEPS:-tests bench profile}; do
  case $what in
    tests) step gpu_tests ${TESTS_LIMIT:-150} python3 -m pytest -q -rs -p no:cacheprovider tests/test_kernels_gpu.py tests/test_eval_gpu.py tests/test_host_kernels.py ;;
    probe) step stream_probe 90 python3 bench/stream_probe.py --out "$R/stream_probe.json" ;;
    bench) step kernel_bench ${BENCH_LIMIT:-240} python3 bench/kernel_bench.py --out "$R/kernel_bench.json" ${KERNEL_ARGS:---reps 20} ;;
    profile)  # PROFILES: profile_decode.py option sets separated by ';', one profile each (default: as eval runs, fused)
      IFS=';' read -ra sets <<< "${PROFILES:---fuse}"
      for i in "${!sets[@]}"; do
        step profile_$i ${PROFILE_LIMIT:-240} python3 bench/profile_decode.py --batch 1,8,32 ${sets[$i]} --out "$R/profile_$i.json"
      done ;;
    none) echo "== no kernels: steps skipped" ;;
  esac
done
tar -C "$OUT" -czf "$OUT/round.tgz" round && rm -rf "$R"
echo "== done ($(left) s left)"
