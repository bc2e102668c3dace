"""Plot a kernel_bench.py result: speed-up over cuBLAS bf16 against M, one panel per (N, K), group 128 and 32;
quantkit's points are the contenders this commit's dispatch picks (kernel_table.pick).

    python3 bench/kernel_plot.py bench/results/kernel_h100.json bench/results/kernel_h100.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from kernel_table import pick  # noqa: E402  (bench/ is this script's directory)


def main(src: str, dst: str) -> None:
    data = json.load(open(src))
    rows = data["results"]
    shapes = sorted({(r["N"], r["K"]) for r in rows}, key=lambda s: s[0] * s[1])
    fig, axes = plt.subplots(1, len(shapes), figsize=(4 * len(shapes), 3.6), sharey=True)
    for ax, (n, k) in zip(axes, shapes):
        for group, style in ((128, "-"), (32, "--")):
            sel = sorted((r for r in rows if (r["N"], r["K"], r["group"]) == (n, k, group)), key=lambda r: r["M"])
            if not sel:
                continue
            ms = [r["M"] for r in sel]
            ax.plot(ms, [r[pick(r)]["speedup_vs_cublas"] for r in sel], "o" + style, color="C0",
                    label=f"quantkit g{group}")
            int4 = [(r["M"], r["torch_int4"]["speedup_vs_cublas"]) for r in sel if "us" in r.get("torch_int4", {})]
            if int4:
                ax.plot(*zip(*int4), "s" + style, color="C1", ms=3, label=f"torch int4 g{group}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_title(f"N={n} K={k}")
        ax.set_xlabel("M (tokens)")
    axes[0].set_ylabel("speed-up over cuBLAS bf16")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"W4A16 on {data['device']} (bf16, cold L2, CUDA graphs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
