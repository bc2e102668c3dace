"""The packing of x for the warp-specialized kernel alone (the extension's wgmma_pack_x): without act-order in the
MMA's own order (no index, 16-byte loads; what w4a16_linear runs) against the same image through the word index
(what it ran before), in one run, CUDA graphs, median of repeats, after each of the benchmark's L2 flushes.

    python3 bench/pack_bench.py --out bench/results/pack_h200.json

Both images are compared before timing; a mismatch stops the run.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from quantkit.kernels import build, kernel_available, prepare, testing
from kernel_bench import copy_bandwidth, time_calls, write_json

log = logging.getLogger("pack_bench")

MS = (16, 32, 256, 512, 1024, 4096)
KS = (4096, 14336)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--ks", default=",".join(map(str, KS)))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    ok, reason = kernel_available()
    if not ok:
        log.error("no kernel: %s", reason)
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    ext = build.load_extension()
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    result = {"command": " ".join(["python3", "bench/pack_bench.py", *(argv if argv is not None else sys.argv[1:])]),
              "device": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "copy_bandwidth_Bps": copy_bandwidth(device), "reps": args.reps, "rows": []}
    for k in map(int, args.ks.split(",")):
        ql = testing.random_qlinear(128, k, group_size=128, sym=True, act_order=False, dtype=torch.bfloat16,
                                     seed=1)
        index, words = prepare(ql, device=device).wgmma_x_pack_index()
        for m in map(int, args.ms.split(",")):
            x = testing.random_activations(m, k, dtype=torch.bfloat16, seed=2, device=device)
            plain, indexed = torch.empty_like(x), torch.empty_like(x)
            ext.wgmma_pack_x(x, None, True, plain)
            ext.wgmma_pack_x(x, index, words, indexed)
            if not torch.equal(plain, indexed):
                log.error("M %d, K %d: the plain packing differs from the indexed one", m, k)
                return 1
            fns = {"plain": lambda: ext.wgmma_pack_x(x, None, True, plain),
                   "indexed": lambda: ext.wgmma_pack_x(x, index, words, indexed)}
            row = {"M": m, "K": k, "bytes": 2 * x.numel() * x.element_size()}
            for cache in ("zero", "clean"):
                row[cache] = time_calls(fns, flush, args.reps, cache)
            result["rows"].append(row)
            log.info("M %5d K %5d: plain %.1f / %.1f us, indexed %.1f / %.1f us (zeroing / reading flush)", m, k,
                     row["zero"]["plain"]["us"], row["clean"]["plain"]["us"], row["zero"]["indexed"]["us"],
                     row["clean"]["indexed"]["us"])
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
