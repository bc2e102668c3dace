"""One W4A16 kernel call, repeated, for Nsight Compute to profile (no CUDA graph, no timing of its own).

    ncu --clock-control none --profile-from-start off -k regex:qk_ --launch-skip 3 --launch-count 1 \
        --section SpeedOfLight --section WarpStateStats --section Occupancy python3 bench/kernel_ncu.py \
        --n 28672 --k 8192 --m 64 --backend wgmma --bt 64

The kernels' build and self-check run first, outside the profiled range (cudaProfilerStart/Stop around the calls),
so that --launch-skip counts this script's calls only: without --profile-from-start off, ncu's launch count starts
at the self-check's kernels.
"""

from __future__ import annotations

import argparse

import torch

from quantkit.kernels import ops, prepare, self_check, testing, w4a16_linear


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--m", type=int, required=True)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--backend", default="kernel")
    ap.add_argument("--bt", type=int, default=None)
    ap.add_argument("--dense", action="store_true")
    ap.add_argument("--ws", action="store_true", help="the warp-specialized wgmma kernel")
    ap.add_argument("--stream-k", action="store_true", help="the warp-specialized kernel's stream-K")
    ap.add_argument("--grid", action="store_true", help="the warp-specialized kernel's grid, never stream-K")
    ap.add_argument("--splits", type=int, default=None, help="split-K (the wgmma kernels: a cluster of the splits)")
    ap.add_argument("--probe", type=int, default=0, help="ops.ws_probe's level (1 to 4) instead of the product")
    ap.add_argument("--calls", type=int, default=5)
    args = ap.parse_args()
    ql = testing.random_qlinear(args.n, args.k, group_size=args.group, sym=True, act_order=False,
                                dtype=torch.bfloat16, seed=1, device="cuda")
    packed = prepare(ql, device="cuda", layouts=("mma",), keep_reference=False)
    x = testing.random_activations(args.m, args.k, dtype=torch.bfloat16, seed=2, device="cuda")
    extra = {"bt": args.bt, "dense": args.dense, "ws": args.ws} if args.backend == "wgmma" else {}
    if args.splits:
        extra["splits"] = args.splits
    if args.stream_k or args.grid:
        extra["stream_k"] = not args.grid
    self_check()  # builds the extension and runs its self-check now, before the profiled range
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for _ in range(args.calls):
        if args.probe:
            ops.ws_probe(x, packed, args.probe, bt=args.bt, stream_k=extra.get("stream_k"))
        else:
            w4a16_linear(x, packed, backend=args.backend, **extra)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
