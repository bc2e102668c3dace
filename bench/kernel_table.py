"""Markdown tables and the issue-4 target check from the kernel benchmark's JSON.

    python bench/kernel_table.py bench/results/kernel_h100.json > bench/results/kernel_h100.md
    python bench/kernel_table.py --variants bench/results/kernel_h100_wgmma.json > bench/results/kernel_h100_wgmma.md
    python bench/kernel_table.py --variants bench/results/kernel_h100_ring.json 1 > bench/results/kernel_h100_ring.md

--variants: every contender of a --tune run for M >= 16 (or M >= the number after the file), and the path
today's dispatch (quantkit.kernels.ops) picks for each shape, to check the dispatch against the measurements it
was set from.
--splits: a --tune run's split-K sweep, each kernel's time at every split count with split-K through global memory
and through a cluster, beside the count today's rules (ops.mma_splits, ops.wgmma_splits) pick.

    python bench/kernel_table.py --splits bench/results/kernel_h200_splits.json > bench/results/kernel_h200_splits.md

--compare: two runs' own dispatch at the points both measured (another commit, or QUANTKIT_ settings), the second
against the first.

    python bench/kernel_table.py --compare A.json "blocks of 4" B.json "blocks of 8" > bench/results/a_vs_b.md

--l2: a --l2-prefetch run's dispatched kernel with its layer's weights requested into the L2 before the call
(quantkit_l2) against the same kernel without, at each shape, group and M.

    python bench/kernel_table.py --l2 bench/results/kernel_h200_l2.json > bench/results/kernel_h200_l2.md
"""

from __future__ import annotations

import json
import re
import sys

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192), (8192, 28672)]
LARGEST = SHAPES[3:]


def shape_rank(n: int, k: int) -> int:
    """Where the shape (N, K) stands in the tables' order: SHAPES' order, any other shape after them."""
    return SHAPES.index((n, k)) if (n, k) in SHAPES else len(SHAPES)


SMS = 132  # multiprocessors of the H100 SXM and the H200 the tables were measured on (the split-K rules use it)


def dispatched_key(m: int, n: int, k: int) -> str:
    """The benchmark contender that is exactly what this commit's dispatch (quantkit.kernels.ops) runs for this shape
    on Hopper (the wgmma variants exist in --tune runs only)."""
    from quantkit.kernels import ops

    path = ops.mma_or_dequant(m, n, k, wgmma=True, sms=SMS)
    if path == "mma":
        return "qk_stream_wk" if ops.stream_wk(m) else "qk_stream"
    if path == "dequant":
        return "qk_dequant"
    if ops.wgmma_ws(m, n, k, SMS):
        bt, ctas, _, splits = ops.ws_plan(m, n, k, SMS)
        if ctas:
            return f"qk_wgmma_ws_sk_bt{bt}"
        return f"qk_wgmma_ws_bt{bt}_s{splits}" if splits > 1 else f"qk_wgmma_ws_bt{bt}"
    bt = ops.wgmma_bt(m, n)
    if ops.WGMMA_WSM:
        return f"qk_wgmma_wsm_bt{bt}_dense" if bt <= 128 else "qk_wgmma_wsm_bt256"
    return f"qk_wgmma_dense_bt{bt}" if bt <= 128 else "qk_wgmma_bt256"


def pick(r: dict) -> str:
    """The contender of row r that the dispatch in this commit runs, measured in the same run: dispatched_key (or,
    where that kernel is not a programmatic launch, ops.ws_pdl, the dispatch without it), else
    the run's default contender of that wgmma kernel (a run or group without --tune: the warp-specialized kernel at
    its default tile, or qk_wgmma_gemm's; not for a split grid, whose unsplit default would misstate it), else
    "quantkit" (what the run's own dispatch ran)."""
    from quantkit.kernels import ops

    key = dispatched_key(r["M"], r["N"], r["K"])
    if key.startswith("qk_wgmma_ws") and not ops.ws_pdl(ops.ws_plan(r["M"], r["N"], r["K"], SMS)[0]):
        # the run timed the warp-specialized contenders as programmatic launches (ops.WS_PDL at the time); the
        # dispatch without it is quantkit_nopdl where the run had it
        key = "quantkit_nopdl" if "us" in r.get("quantkit_nopdl", {}) else key
    if "us" not in r.get(key, {}) and re.search(r"_s\d+$", key):  # a split grid this run did not time alone
        key = "quantkit"
    elif "us" not in r.get(key, {}) and key.startswith("qk_wgmma_ws_sk_"):
        key = "qk_wgmma_ws_sk"
    elif "us" not in r.get(key, {}) and key.startswith("qk_wgmma_ws_"):
        key = "qk_wgmma_ws"
    elif "us" not in r.get(key, {}) and key.startswith("qk_wgmma"):
        key = "qk_wgmma_wsm" if ops.WGMMA_WSM else "qk_wgmma"
    return key if "us" in r.get(key, {}) else "quantkit"


def speedup(rows, n, k, m, group):
    for r in rows:
        if (r["N"], r["K"], r["M"], r["group"]) == (n, k, m, group):
            return r[pick(r)]["speedup_vs_cublas"], r
    return None, None


def table(rows, group) -> list[str]:
    ms = sorted({r["M"] for r in rows if r["group"] == group})
    out = ["| M | " + " | ".join(f"{n}x{k}" for n, k in SHAPES) + " |", "|---" * (len(SHAPES) + 1) + "|"]
    for m in ms:
        cells = []
        for n, k in SHAPES:
            s, r = speedup(rows, n, k, m, group)
            if s is None:
                cells.append("")
            elif m == 1:
                t = r[pick(r)]
                cells.append(f"{s:.2f}x ({t['us']:.1f} us, {100 * t['bw_frac']:.0f}% BW)")
            else:
                cells.append(f"{s:.2f}x")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return out


def targets(rows, device: str) -> list[str]:
    def worst(ms, shapes=SHAPES, group=128):
        vals = [speedup(rows, n, k, m, group)[0] for m in ms for n, k in shapes]
        return min(v for v in vals if v is not None)

    int4 = []
    for n, k in LARGEST:
        _, r = speedup(rows, n, k, 1, 128)
        int4.append(r["torch_int4"]["us"] / r[pick(r)]["us"])
    ms_all = sorted({r["M"] for r in rows})
    g32 = []
    for m in ms_all:
        for n, k in SHAPES:
            a, _ = speedup(rows, n, k, m, 128)
            b, _ = speedup(rows, n, k, m, 32)
            if a and b:
                g32.append((m, b / a))
    checks = [
        ("M = 1, two largest shapes: >= 3.5x cuBLAS", worst([1], LARGEST), 3.5),
        ("M = 1, two largest shapes: >= 1.4x torch int4", min(int4), 1.4),
        ("M <= 16: >= 3x", worst([m for m in ms_all if m <= 16]), 3.0),
        ("M = 32: >= 2.5x", worst([32]), 2.5),
        ("M = 64: >= 1.5x", worst([64]), 1.5),
        ("M = 128: >= 1x", worst([128]), 1.0),
        ("every M: >= 0.9x", worst(ms_all), 0.9),
    ]
    if g32:  # a run of both groups
        checks.append(("group 32 within 15% of group 128 (g32/g128 speed)", min(v for _, v in g32), 0.85))
    where = "H100" if "H100" in device else f"{device}; the targets were set for an H100"
    out = [f"| target ({where}, group 128, bf16) | measured (worst case) | holds |", "|---|---|---|"]
    out += [f"| {name} | {value:.2f}x | {'yes' if value >= bar else 'no'} |" for name, value, bar in checks]
    return out


VARIANTS = [("qk_stream", "stream"), ("qk_ring", "stream, ring"), ("qk_stream_bulk", "stream, bulk"),
            ("qk_stream_lean", "stream, lean"), ("qk_stream_mt2", "stream, 16-token blocks"),
            ("qk_stream_pf4", "stream, 4 + 4 in flight"), ("qk_stream_pf2", "stream, 2 + 2 in flight"),
            ("qk_stream_b8", "stream, batches of 8"), ("qk_stream_wk", "stream, warps share a tile"),
            ("qk_stream_nt2", "stream, 2 tiles a warp"), ("qk_stream_nt2_wk", "stream, 2 tiles, warps share"),
            ("qk_dequant", "dequant"),
            ("qk_wgmma_bt64", "wgmma 64"), ("qk_wgmma_dense_bt64", "wgmma 64 x2"), ("qk_wgmma_bt128", "wgmma 128"),
            ("qk_wgmma_dense_bt128", "wgmma 128 x2"), ("qk_wgmma_bt256", "wgmma 256"), ("qk_wgmma_wsm_bt64", "wgmma 64 wsm"),
            ("qk_wgmma_wsm_bt64_dense", "wgmma 64 x2 wsm"), ("qk_wgmma_wsm_bt128", "wgmma 128 wsm"),
            ("qk_wgmma_wsm_bt128_dense", "wgmma 128 x2 wsm"), ("qk_wgmma_wsm_bt256", "wgmma 256 wsm"),
            ("qk_wgmma", "wgmma"), ("qk_wgmma_ovl", "wgmma ovl"), ("qk_wgmma_wsm", "wgmma wsm"),
            ("qk_wgmma_ws_bt16", "ws 128x16"), ("qk_wgmma_ws_bt32", "ws 128x32"),
            ("qk_wgmma_ws_sk_bt16", "ws 128x16 stream-K"), ("qk_wgmma_ws_sk_bt32", "ws 128x32 stream-K"),
            ("qk_wgmma_ws_bt64", "ws 128x64"), ("qk_wgmma_ws_bt128", "ws 128x128"), ("qk_wgmma_ws_bt256", "ws 128x256"),
            ("qk_wgmma_ws_sk_bt64", "ws 128x64 stream-K"), ("qk_wgmma_ws_sk_bt128", "ws 128x128 stream-K"),
            ("qk_wgmma_ws_sk_bt256", "ws 128x256 stream-K"), ("qk_wgmma_ws_bt64_mc", "ws 128x64 multicast"),
            ("qk_wgmma_ws_bt128_mc", "ws 128x128 multicast"), ("qk_wgmma_ws_bt256_mc", "ws 128x256 multicast"),
            *[(f"qk_wgmma_ws_bt{bt}_s{s}", f"ws 128x{bt}, {s} splits") for bt in (64, 128, 256) for s in (2, 3, 4)],
            ("qk_wgmma_ws_rows256_bt128", "ws 256x128")]


def dispatched(m: int, n: int, k: int) -> str:
    """The label (VARIANTS) of what this commit's dispatch runs for this shape."""
    return dict(VARIANTS)[dispatched_key(m, n, k)]


def variants(data: dict, min_m: int | None = None) -> list[str]:
    lines = [f"Speed-up over cuBLAS bf16 of each kernel variant on the {data['device']} (torch {data['torch']}), "
             f"{data['timing']}. Command: `{data['command']}`. \"x2\": the two-blocks-per-multiprocessor instance; "
             "**bold**: the path today's dispatch picks.", ""]
    picked: dict = {}
    shown = [(key, label) for key, label in VARIANTS if any(key in r for r in data["results"])]
    for n, k in SHAPES:
        rows = sorted((r for r in data["results"]  # group 128 (what --tune measures every variant at)
                       if (r["N"], r["K"], r["group"]) == (n, k, 128) and r["M"] >= (min_m or 16)),
                      key=lambda r: r["M"])
        if not rows:
            continue
        lines += [f"{n}x{k}, group {rows[0]['group']}:", "", "| M | " + " | ".join(v for _, v in shown) + " |",
                  "|---" * (len(shown) + 1) + "|"]
        for r in rows:
            pick, cells = dispatched(r["M"], n, k), []
            for key, label in shown:
                t = r.get(key, {})
                cell = f"{r['cublas_bf16']['us'] / t['us']:.2f}x" if "us" in t else ("failed" if "error" in t else "")
                cells.append(f"**{cell}**" if label == pick and cell else cell)
                if label == pick and "us" in t:
                    picked.setdefault(r["M"], []).append(r["cublas_bf16"]["us"] / t["us"])
            lines.append(f"| {r['M']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Today's dispatch on these measurements, worst and best speed-up over the shapes:", "",
              "| M | worst | best |", "|---|---|---|"]
    lines += [f"| {m} | {min(v):.2f}x | {max(v):.2f}x |" for m, v in sorted(picked.items())]
    return lines


def rule_splits(kernel: str, m: int, n: int, k: int, row: dict) -> int | None:
    """The split count this commit's rules pick for a --tune sweep row, or None where they would run another
    configuration than the row records (wk, its blocks' warps, tokens per block). Rows of runs before the configuration
    was recorded are taken to have run this commit's configuration, but blocks of 4 warps (wk_warps, recorded from
    session 48 on)."""
    from quantkit.kernels import ops

    if kernel == "wgmma":
        bt = ops.wgmma_bt(m, n)
        return ops.wgmma_splits(m, n, k, SMS, bt) if row.get("bt", bt) == bt else None
    plan = ops.mma_plan(m, n, k, SMS, staged=kernel == "staged")
    if row.get("wk", plan.wk) != plan.wk or row.get("wk_warps", ops.STREAM_WK_WARPS) != plan.warps:
        return None
    return plan.splits


def _sweep_kernel(t: dict) -> str:
    """A sweep row's kernel (rows of runs before it was recorded: staged or stream)."""
    return t.get("kernel", "staged" if t["staged"] else "stream")


def splits_table(data: dict) -> list[str]:
    tune = data["tune"]
    counts = sorted({t["splits"] for t in tune})
    lines = [f"Split-K sweep on the {data['device']} (torch {data['torch']}), {data['timing']}, time in us. Command: "
             f"`{data['command']}`. Each cell: split-K through global memory / through a thread-block cluster "
             "(distributed shared memory; one figure where the GPU has no clusters or the count is above 16). "
             "**bold**: the fastest of the row; * the count this commit's rules pick, and its time over the fastest "
             "(rule / best); (sweep): the count the run's own rules picked.", "",
             "| shape | kernel | M | " + " | ".join(str(c) for c in counts) + " | rule / best |",
             "|---" * (len(counts) + 4) + "|"]
    keys = sorted({(t["N"], t["K"], _sweep_kernel(t), t["M"]) for t in tune},
                  key=lambda v: (shape_rank(*v[:2]), v[:2], v[2] != "stream", v[3], v[2]))  # no tie: no set order
    for n, k, kernel, m in keys:
        rows = [t for t in tune if (t["N"], t["K"], t["M"], _sweep_kernel(t)) == (n, k, m, kernel)]
        best = min(rows, key=lambda t: t["us"])
        rule = rule_splits(kernel, m, n, k, rows[0])
        at_rule = [t["us"] for t in rows if t["splits"] == rule]
        cells = []
        for c in counts:
            ts = sorted((t for t in rows if t["splits"] == c), key=lambda t: t.get("cluster", False))
            txt = " / ".join(f"**{t['us']:.1f}**" if t is best else f"{t['us']:.1f}" for t in ts)
            cells.append(txt + ("*" if c == rule and ts else "") + (" (sweep)" if ts and ts[0]["default"] else ""))
        ratio = f"{min(at_rule) / best['us']:.2f}" if at_rule else "n/a"
        lines.append(f"| {n}x{k} | {kernel} | {m} | " + " | ".join(cells) + f" | {ratio} |")
    return lines


def l2_table(data: dict) -> list[str]:
    """The rows of a --l2-prefetch run that timed quantkit_l2: both times and the gain, beside cuBLAS bf16's time."""
    lines = [f"The dispatched W4A16 kernel on the {data['device']} (torch {data['torch']}) with its layer's weights "
             f"requested into the L2 before the call (ops.l2_prefetch) against without, {data['timing']}. Command: "
             f"`{data['command']}`.", "",
             "| N x K | group | M | cold L2 us | weights in the L2 us | speed-up | cuBLAS bf16 us |", "|---|---|---|---|---|---|---|"]
    for r in sorted(data["results"], key=lambda r: (r["group"], shape_rank(r["N"], r["K"]), r["N"], r["K"], r["M"])):
        cold, warm = r.get("quantkit", {}), r.get("quantkit_l2", {})
        if "us" in cold and "us" in warm:
            lines.append(f"| {r['N']}x{r['K']} | {r['group']} | {r['M']} | {cold['us']:.1f} | {warm['us']:.1f} | "
                         f"{cold['us'] / warm['us']:.2f}x | {r['cublas_bf16']['us']:.1f} |")
    return lines


def compare_table(base: dict, other: dict, base_name: str, other_name: str) -> list[str]:
    """Two runs' own dispatch ("quantkit", what each run's quantkit.kernels.ops ran, under its QUANTKIT_ settings) at
    the points both measured: each time and cuBLAS bf16 speed-up, and how much faster ``other`` is."""
    lines = [f"The dispatched W4A16 kernel of two runs on the {other['device']} (torch {other['torch']}), "
             f"{other['timing']}: {base_name} (`{base['command']}`) against {other_name} (`{other['command']}`), "
             "us (speed-up over cuBLAS bf16 in the same run).", "",
             f"| N x K | group | M | {base_name} | {other_name} | {other_name} faster by |",
             "|---|---|---|---|---|---|"]
    theirs = {(r["N"], r["K"], r["group"], r["M"]): r for r in other["results"]}
    for r in sorted(base["results"], key=lambda r: (r["group"] != 128, shape_rank(r["N"], r["K"]), r["M"])):
        o = theirs.get((r["N"], r["K"], r["group"], r["M"]))
        if o is None or "us" not in r.get("quantkit", {}) or "us" not in o.get("quantkit", {}):
            continue
        a, b = r["quantkit"], o["quantkit"]
        lines.append(f"| {r['N']}x{r['K']} | {r['group']} | {r['M']} | {a['us']:.1f} ({a['speedup_vs_cublas']:.2f}x) | "
                     f"{b['us']:.1f} ({b['speedup_vs_cublas']:.2f}x) | {a['us'] / b['us']:.3f}x |")
    return lines


def main(path: str) -> None:
    data = json.load(open(path))
    rows = data["results"]
    lines = [f"Speed-up over cuBLAS bf16 on the {data['device']} (torch {data['torch']}), {data['timing']}; "
             f"copy bandwidth {data['copy_bandwidth_Bps'] / 1e12:.2f} TB/s. Command: `{data['command']}`. Each cell "
             "is the kernel that quantkit's dispatch (this commit's quantkit.kernels.ops) runs for that shape, as "
             "measured in that run.", ""]
    for group in (128, 32):
        lines += [f"Group {group}:", ""] + table(rows, group) + [""]
    lines += targets(rows, data["device"])
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__" and sys.argv[1:2] == ["--splits"]:
    sys.stdout.write("\n".join(splits_table(json.load(open(sys.argv[2])))) + "\n")
elif __name__ == "__main__" and sys.argv[1:2] == ["--l2"]:
    sys.stdout.write("\n".join(l2_table(json.load(open(sys.argv[2])))) + "\n")
elif __name__ == "__main__" and sys.argv[1:2] == ["--compare"]:  # --compare BASE.json NAME OTHER.json NAME
    sys.stdout.write("\n".join(compare_table(json.load(open(sys.argv[2])), json.load(open(sys.argv[4])), sys.argv[3],
                                             sys.argv[5])) + "\n")
elif __name__ == "__main__" and sys.argv[1:2] == ["--variants"]:  # --variants JSON [MIN_M (default 16)]
    sys.stdout.write("\n".join(variants(json.load(open(sys.argv[2])), int(sys.argv[3]) if sys.argv[3:] else None)) + "\n")
elif __name__ == "__main__":
    main(sys.argv[1])
