"""What the RDNA3 decode kernel's split-K costs in accuracy, measured on the CPU build of its source
(quantkit.kernels.host): each split of K (256 inputs) adds its fp32 sums into the 16-bit output by compare-and-swap
(docs/formats.md §2), one more rounding a split, where one rounding at the end is the least there can be (the
reference: the same dequantized weights, fp32 accumulation, one rounding). Relative Frobenius error of each against
the fp64 product, on the Llama-3-8B decoder layers' shapes, group 128, symmetric, at M = 1 and 8.

    python bench/rdna3_split_error.py --out bench/results/rdna3_split_error.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from quantkit.kernels import host, ops, prepare, testing, w4a16_linear
from quantkit.kernels.reference import reference_weight

SHAPES = {"q/k/v": (6144, 4096), "o": (4096, 4096), "gate/up": (28672, 4096), "down": (4096, 14336)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", default="1,8")
    args = ap.parse_args(argv)
    if host.CXX is None:
        print("error: no C++ compiler (g++ or clang++-19) to build the kernels for the CPU", file=sys.stderr)
        return 2
    k_split = ops.dot2_k_split(128)
    with tempfile.TemporaryDirectory() as tmp:
        kernels = host.load(Path(tmp))
        rows = []
        for dtype in (torch.bfloat16, torch.float16):
            for role, (n, k) in SHAPES.items():
                ql = testing.random_qlinear(n, k, group_size=128, sym=True, act_order=False, dtype=dtype, seed=1)
                packed = prepare(ql, device="cpu", layouts=("dot2",))
                w = reference_weight(packed, dtype)
                for m in map(int, args.ms.split(",")):
                    x = testing.random_activations(m, k, dtype=dtype, seed=2 + m, device="cpu")
                    t0 = time.time()
                    y = ops._dot2_layout_gemm(kernels.dot2_gemm, x, packed, None, k_split)
                    seconds = time.time() - t0  # the dot2 kernel's CPU build alone
                    row = {"dtype": str(dtype).removeprefix("torch."), "layer": role, "N": n, "K": k, "M": m,
                           "splits": -(-k // k_split),
                           "dot2_error": testing.relative_error(y, w, x),
                           "one_rounding_error": testing.relative_error(w4a16_linear(x, packed, backend="reference"),
                                                                        w, x),
                           "cpu_seconds": round(seconds, 2)}
                    row["ratio"] = row["dot2_error"] / row["one_rounding_error"]
                    rows.append(row)
                    print(f"{row['dtype']:8} {role:8} {n}x{k} M={m}: {row['splits']} splits, dot2 "
                          f"{row['dot2_error']:.2e}, one rounding {row['one_rounding_error']:.2e} ({row['ratio']:.1f}x)")
    compiler = subprocess.run([host.CXX, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    command = "python bench/rdna3_split_error.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"command": command.strip(), "compiler": compiler, "machine": platform.machine(),
              "torch": torch.__version__, "group_size": 128, "sym": True, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
