#!/usr/bin/env bash
# Session 36's device call: the first GPU run of what sessions 33-35 built without one (docs/kernel.md items 44-46).
#   a. bench/device_round.sh, STEPS=tests: the build, the self-check with its dispatch cases (selfcheck.DISPATCH_CASES),
#      the GPU tests (the pipelined 32-token instance's, probe level 4's, the CPU build of the RDNA3 kernels against
#      the GPU's bits);
#   b. a smoke run of the pipelined instance and of probe level 4, one process each under a timeout: a kernel that
#      hangs or fails there is left out of the benchmark (kernel_bench.py --skip) rather than stopping it;
#   c. bench/device_round.sh, STEPS=bench: M = 16 and 32, group 128, the eval's four Llama-3-8B layers first, then the
#      issue's, with the probe's four levels (qk_wgmma_ws_sk_bt32_pipe beside qk_wgmma_ws_sk_bt32 and the dispatch).
#     bash bench/results/pipe_round.sh OUT_DIR [SECONDS]   (ends within SECONDS, default 588; OUT_DIR/{a,b}/round.tgz,
#     a/*.so)
set -u
OUT=${1:?usage: pipe_round.sh OUT_DIR [SECONDS]}
TOTAL=${2:-588}
T0=$(date +%s)
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
STEPS=tests TESTS_LIMIT=140 bash bench/device_round.sh "$OUT/a" $(( TOTAL * 6 / 10 ))
. bench/device_env.sh > /dev/null
export QUANTKIT_KERNEL_CACHE=$PWD/.qkcache
smoke() {  # smoke LEVEL: 0 the pipelined instance, else that probe level; rc 0 when it returns
  timeout 45 python3 -c "
import sys, torch
from quantkit.kernels import ops, prepare, testing, w4a16_linear
ql = testing.random_qlinear(28672, 4096, group_size=128, sym=True, act_order=False, dtype=torch.bfloat16, seed=3, device='cuda')
p = prepare(ql, device='cuda')
for m in (16, 32):
    x = testing.random_activations(m, 4096, dtype=torch.bfloat16, seed=m, device='cuda')
    if $1:
        ops.ws_probe(x, p, $1, bt=ops.ws_stream_k_bt(m), stream_k=True)
    else:
        y = w4a16_linear(x, p, backend='wgmma', bt=32, ws=True, stream_k=True, pipelined=True)
        ref = w4a16_linear(x, p, backend='wgmma', bt=32, ws=True, stream_k=True, pipelined=False)
        assert torch.equal(y, ref), 'the pipelined instance differs from the plain one'
    torch.cuda.synchronize()
print('smoke $1 ok')" 2>&1 | tail -n 2
  return "${PIPESTATUS[0]}"
}
SKIP=
smoke 0 || SKIP="_pipe$"
smoke 4 || SKIP="${SKIP:+$SKIP|}^probe_ws_nox$"
echo "skip: ${SKIP:-none}"
SHAPES="28672x4096;4096x14336;6144x4096;4096x4096;14336x4096;28672x8192;8192x28672"
STEPS=bench BENCH_LIMIT=400 KERNEL_ARGS="--reps 20 --ms 16,32 --groups 128 --ws-probe --shapes $SHAPES ${SKIP:+--skip $SKIP}" \
  bash bench/device_round.sh "$OUT/b" "$(left)"
rm -f "$OUT"/b/*.so
echo "== all done ($(left) s left)"
