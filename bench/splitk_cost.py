"""What the streaming kernel's split-K reduction costs at M = 1: pairs of layers with the same grid, the same
weights per warp (8 chunks of 64 k) and the same bytes, one split K into several blocks (fp32 partials, a counter
per tile, the last block summing), the other not (K = 512, one split).

    python3 bench/splitk_cost.py --out bench/results/splitk_cost_h100.json

"copy_rate_us": the weights and scales at the device-to-device copy rate (read + write), as kernel_bench.py's
bandwidth fraction counts them. Same timing as bench/kernel_bench.py (CUDA graph replay of one call after an L2 flush, median); each output is
checked against the fp32 product of the same dequantized weights before it is timed.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from kernel_bench import check, copy_bandwidth, time_call  # bench/ is on sys.path when this runs
from quantkit.kernels import prepare, self_check, testing, w4a16_linear

PAIRS = [((4096, 4096, 8), (32768, 512, 1)), ((6144, 4096, 8), (49152, 512, 1)),
         ((14336, 4096, 8), (114688, 512, 1)), ((4096, 14336, 28), (114688, 512, 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    device = torch.device("cuda")
    self_check(device)
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    bw = copy_bandwidth(device)
    result = {"command": "python3 bench/splitk_cost.py " + " ".join(sys.argv[1:]),
              "device": torch.cuda.get_device_name(device), "torch": torch.__version__, "copy_bandwidth_Bps": bw,
              "pairs": []}
    for split, whole in PAIRS:
        row = {}
        for name, (n, k, splits) in (("split", split), ("whole", whole)):
            ql = testing.random_qlinear(n, k, group_size=128, sym=True, act_order=False, dtype=torch.bfloat16,
                                        seed=n + k)
            packed = prepare(ql, device=device, layouts=("mma",), keep_reference=False)
            x = testing.random_activations(1, k, dtype=torch.bfloat16, seed=1, device=device)
            fn = lambda: w4a16_linear(x, packed, backend="mma", staged=False, splits=splits)  # noqa: E731
            truth = x.float() @ ql.dequantize(torch.bfloat16).to(device).float().T
            check(f"{n}x{k} splits {splits}", fn(), truth, testing.TOLERANCE[torch.bfloat16])
            t = time_call(fn, flush, args.reps)
            row[name] = {"N": n, "K": k, "splits": splits, "blocks": n // 64 * splits, **t,
                         "copy_rate_us": (n * k // 2 + n * k // 128 * 2) / bw * 1e6}
            del packed
        row["reduction_us"] = row["split"]["us"] - row["whole"]["us"]
        result["pairs"].append(row)
        print(f"{split[0]}x{split[1]} in {split[2]} splits: {row['split']['us']:.1f} us; {whole[0]}x{whole[1]} whole: "
              f"{row['whole']['us']:.1f} us (same grid of {row['split']['blocks']} blocks, same bytes: "
              f"{row['whole']['copy_rate_us']:.1f} us at the copy rate)", flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
