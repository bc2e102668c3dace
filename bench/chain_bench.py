"""The W4A16 linears of a decode step alone: Llama-3-8B's four kernels a layer (q/k/v as one layer, o_proj, gate/up as
a gated pair with the SiLU-and-multiply epilogue, down), LAYERS layers of their own random weights, back to back in one
CUDA graph, each a programmatic dependent launch as in the eval's compiled step (quantkit.eval.fuse). Every kernel
meets its weights in DRAM (the layers' 3.6 GB dwarf the L2), as in a step; attention and the norms are left out, so
that the time is the kernels' and their boundaries'. Variants override one role's split-K (and its cluster) at a time,
so that a split rule fitted to one call after an L2 flush (bench/kernel_bench.py) can be checked where the kernels run
in a chain, and (--alone) each role's kernel alone, over the layers on one input. The bf16 model's linears (cuBLAS,
torch's SiLU and multiply) run the same chain as the baseline.

    python3 bench/chain_bench.py --out bench/results/chain_h100.json

The gated MLP in one launch (ops.w4a16_mlp, "mlp_one_launch"; off by default in the eval) is a variant of every run
where it takes the M.

Times: us a layer (one replay of the LAYERS-layer graph / LAYERS), median of --reps replays, the variants interleaved
(kernel_bench.time_calls). Each variant's output after the first layer is checked against the default dispatch's before
it is timed.
"read_floor_us": the layer's (with --alone also each role's) 4-bit weights and scales at the rate of a plain read of
1 GiB measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from tqdm import tqdm

from kernel_bench import median_seconds, time_calls  # bench/ is on sys.path when this runs
from quantkit.eval import run_settings
from quantkit.kernels import build, ops, packing, prepare, self_check, testing, w4a16_linear

log = logging.getLogger("chain_bench")

HIDDEN, QKV, INTER = 4096, 6144, 14336  # Llama-3-8B
# role -> (N, K) of the layer the kernel reads (gate/up: both halves)
ROLES = {"qkv": (QKV, HIDDEN), "o": (HIDDEN, HIDDEN), "gate_up": (2 * INTER, HIDDEN), "down": (HIDDEN, INTER)}
SPLITS = (1, 2, 4, 8, 16)


def read_rate(device) -> float:
    """Bytes a second of a plain read (a sum) of 1 GiB, median of 20."""
    a = torch.ones(1 << 27, dtype=torch.int64, device=device)
    return a.numel() * 8 / median_seconds(a.sum)


def make_layers(n_layers: int, group: int, device) -> list[dict]:
    def layer(n, k, seed):  # drawn on the GPU: seconds, not minutes, for 3.6 GB
        ql = testing.random_qlinear(n, k, group_size=group, sym=True, act_order=False, dtype=torch.bfloat16,
                                    seed=seed, device=device, draw_on_device=True)
        return prepare(ql, device=device, layouts=("mma",), keep_reference=False)

    layers = []
    for i in tqdm(range(n_layers), desc="layers", unit="layer"):
        s = 5 * i
        layers.append({"qkv": layer(QKV, HIDDEN, s), "o": layer(HIDDEN, HIDDEN, s + 1),
                       "gate_up": packing.interleave_glu(layer(INTER, HIDDEN, s + 2), layer(INTER, HIDDEN, s + 3)),
                       "down": layer(HIDDEN, INTER, s + 4)})
    return layers


def packed_bytes(p) -> int:
    """The 4-bit weights and bf16 scales a kernel of this layer reads."""
    meta = p.mma_meta(torch.bfloat16)
    return p.mma_weight.numel() * p.mma_weight.element_size() + meta.numel() * meta.element_size()


def layer_bytes(layer: dict) -> int:
    return sum(packed_bytes(p) for p in layer.values())


def quantized_chain(layers: list[dict], x: torch.Tensor, over: dict):
    """The chain's call; over: role -> keyword overrides of w4a16_linear (splits, cluster), and "mlp": True for
    gate/up and down in one launch (ops.w4a16_mlp; down's overrides its splits)."""
    kw = {role: {"backend": "kernel", "pdl": True, **over.get(role, {})} for role in ROLES}

    def run():
        h = x
        for layer in layers:
            y = w4a16_linear(h, layer["qkv"], **kw["qkv"])
            a = y[:, :HIDDEN].contiguous()  # attention's output stands in: as many features as o_proj takes
            h = w4a16_linear(a, layer["o"], **kw["o"])
            if over.get("mlp"):
                h = ops.w4a16_mlp(h, layer["gate_up"], layer["down"], backend="kernel", pdl=True,
                                  splits=kw["down"].get("splits"))
                continue
            g = w4a16_linear(h, layer["gate_up"], glu=True, **kw["gate_up"])
            h = w4a16_linear(g, layer["down"], **kw["down"])
        return h
    return run


def alone_chain(layers: list[dict], role: str, x: torch.Tensor, **over):
    """One role's kernel of every layer, back to back on the same input (programmatic launches, as in the chain): what
    that kernel costs where it follows itself, to set beside its share of the read; over: w4a16_linear overrides."""
    glu = role == "gate_up"

    def run():
        for layer in layers:
            y = w4a16_linear(x, layer[role], backend="kernel", pdl=True, glu=glu, **over)
        return y
    return run


def role_input(m: int, role: str, x: torch.Tensor) -> torch.Tensor:
    """The input of a role's kernel run alone: x where the role takes the hidden size, else (down) M rows of its own."""
    k = ROLES[role][1]
    return x if k == HIDDEN else testing.random_activations(m, k, dtype=torch.bfloat16, seed=4, device=x.device)


def bf16_chain(weights: list[dict], x: torch.Tensor):
    def run():
        h = x
        for w in weights:
            y = F.linear(h, w["qkv"])
            h = F.linear(y[:, :HIDDEN].contiguous(), w["o"])
            gu = F.linear(h, w["gate_up"])
            h = F.linear(F.silu(gu[:, :INTER]) * gu[:, INTER:], w["down"])
        return h
    return run


def default_plan(m: int, role: str, sms: int, device) -> dict:
    """The dispatch's split-K, cluster and blocks' warps for this role's layer at M (ops.mma_plan, ops.cluster_size)."""
    n, k = ROLES[role]
    if not ops.stream_wk(m) and role == "gate_up":
        return {}
    plan = ops.mma_plan(m, n, k, sms, staged=False)
    splits = ops.grid_splits(k, plan.splits)
    return {"splits": splits, "cluster": ops.cluster_size(splits, k, device, ops.STREAM_CLUSTER_MAX[m > 16]),
            "wk_warps": plan.warps}


def variants(m: int, sms: int, device) -> dict:
    """name -> role -> overrides: the default, then each role's every split count through the workspace and through a
    cluster (where a cluster holds that many), the others left to the dispatch; and every kernel a plain launch instead
    of a programmatic one (pdl_off); and gate/up and down in one launch (mlp_one_launch). Only the decode kernel's M
    (wk)."""
    out = {"default": {}}
    if not ops.stream_wk(m) or m > ops.STREAM_MAX_M:
        return out
    out.update(mlp_variants(m, sms))
    for role, (n, k) in ROLES.items():
        for s in SPLITS:
            if ops.grid_splits(k, s) != s or (k // 64) // s < 4:
                continue
            out[f"{role}_s{s}_ws"] = {role: {"splits": s, "cluster": False}}
            if 1 < s <= ops.CLUSTER_MAX:
                out[f"{role}_s{s}_cl"] = {role: {"splits": s, "cluster": True}}
    out["pdl_off"] = {role: {"pdl": False} for role in ROLES}  # every kernel a plain launch
    return out


def wk_warps_variants(m: int) -> dict:
    """Blocks of 8 warps sharing a tile (w4a16_linear(wk_warps=8)) at one token tile: each role in 1 or 2 splits (2
    through a cluster), and every role at once in 1 split and in the mix q/k/v, o_proj and gate/up unsplit, down in
    2 (ops.mma_splits' counts for them on a 132-multiprocessor GPU), and that with o_proj in 2; and every role in
    blocks of 4 warps with their splits (wk4_all: the default before session 50, QUANTKIT_STREAM_WK_WARPS=4), and each
    role alone in blocks of 4, the others as dispatched (wk4_ROLE: gate/up's unsplit layer, 6% slower in blocks of 8
    alone at 14336x4096 in session 51's kernel table)."""
    if not (ops.stream_wk(m) and ops.mma_tiles(m) == 1):
        return {}
    out = {f"wk8_{role}_s{s}": {role: {"wk_warps": 8, "splits": s}} for role in ROLES for s in (1, 2)}
    out["wk8_all_s1"] = {role: {"wk_warps": 8, "splits": 1} for role in ROLES}
    out["wk8_mix"] = {**out["wk8_all_s1"], "down": {"wk_warps": 8, "splits": 2}}
    out["wk8_mix_o2"] = {**out["wk8_mix"], "o": {"wk_warps": 8, "splits": 2}}
    out["wk4_all"] = {role: {"wk_warps": 4} for role in ROLES}
    out.update({f"wk4_{role}": {role: {"wk_warps": 4}} for role in ROLES})
    return out


def mlp_variants(m: int, sms: int) -> dict:
    """gate/up and down in one launch (ops.w4a16_mlp, down's default splits) where ops.mlp_at takes that M with
    ops.FUSED_MLP on (main turns it on: the default chain calls the two layers itself either way)."""
    pair = SimpleNamespace(out_features=ROLES["gate_up"][0], in_features=HIDDEN)
    return {"mlp_one_launch": {"mlp": True}} if ops.mlp_at(m, pair, sms) else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", default="1,8", help="batch sizes (rows of x), comma-separated")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--no-sweep", action="store_true", help="the default dispatch and bf16 only")
    ap.add_argument("--only", default=None, help="a regular expression: the sweep's variants whose names it finds")
    ap.add_argument("--alone", action="store_true", help="also each role's kernel alone, over the layers on one input")
    ap.add_argument("--wk8", action="store_true", help="also the variants of blocks of 8 warps sharing a tile "
                    "(wk_warps_variants), and each role alone with them unsplit")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        print("chain_bench: no GPU; nothing to measure", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    ops.FUSED_MLP = True  # the mlp_one_launch variant's (QUANTKIT_FUSED_MLP, off by default, changes no other chain)
    self_check(device)
    sms = ops.sm_count(device)
    rate = read_rate(device)
    layers = make_layers(args.layers, args.group, device)
    per_layer = layer_bytes(layers[0])
    gen = torch.Generator(device=device).manual_seed(5)
    weights = [{role: torch.randn(*ROLES[role], generator=gen, device=device, dtype=torch.bfloat16).mul_(0.02)
                for role in ROLES} for _ in range(args.layers)]
    defines = build.defines()
    result = {"command": run_settings.with_settings("python3 bench/chain_bench.py " + " ".join(sys.argv[1:])),
              "kernel_defines": defines,
              "device": torch.cuda.get_device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
              "layers": args.layers, "group": args.group, "layer_bytes": per_layer, "read_tbps": rate / 1e12,
              "read_floor_us": per_layer / rate * 1e6, "runs": []}
    for m in [int(v) for v in args.ms.split(",")]:
        x = testing.random_activations(m, HIDDEN, dtype=torch.bfloat16, seed=3, device=device)
        names = variants(m, sms, device) if not args.no_sweep else {"default": {}, **mlp_variants(m, sms)}
        names = {k: v for k, v in names.items() if k == "default" or not args.only or re.search(args.only, k)}
        if args.wk8:
            names.update(wk_warps_variants(m))
        fns = {name: quantized_chain(layers, x, over) for name, over in names.items()}
        # checked on the first layer: random layers shrink the activations by orders of magnitude a layer (to zeros
        # in bf16 well before the last, which leaves the times as they are but a comparison of the last meaningless)
        truth = quantized_chain(layers[:1], x, {})().float()
        for name, over in names.items():
            err = float((quantized_chain(layers[:1], x, over)().float() - truth).norm() / truth.norm())
            if not math.isfinite(err) or err > 1e-2:
                raise SystemExit(f"chain_bench: variant {name} at M = {m} differs from the default by {err:.2e}")
        fns["bf16"] = bf16_chain(weights, x)
        if args.alone:
            for role in ROLES:
                xr = role_input(m, role, x)
                fns[f"alone_{role}"] = alone_chain(layers, role, xr)
                if args.wk8 and wk_warps_variants(m):
                    fns[f"alone_wk8_{role}"] = alone_chain(layers, role, xr, wk_warps=8, splits=1)
        times = time_calls(fns, torch.empty(0, device=device), args.reps, cache="rotate", calls=args.layers)
        base = times["default"]["us"]
        plan = {role: default_plan(m, role, sms, device) for role in ROLES}
        rows = {name: {**t, "vs_default": base / t["us"], "overrides": names.get(name, {})} for name, t in times.items()
                if not name.startswith("alone_")}
        for role in ROLES if args.alone else ():
            floor = packed_bytes(layers[0][role]) / rate * 1e6
            for name in (f"alone_{role}", f"alone_wk8_{role}"):
                if name in times:
                    rows[name] = {**times[name], "read_floor_us": floor}
        result["runs"].append({"m": m, "default_plan": plan, "us_per_layer": rows,
                               "linears_ratio": times["bf16"]["us"] / base})
        log.info("M = %d: default %.2f us a layer (plan %s), bf16 %.2f (%.2fx), read floor %.2f", m, base, plan,
                 times["bf16"]["us"], times["bf16"]["us"] / base, result["read_floor_us"])
        for name, row in sorted(rows.items(), key=lambda kv: kv[1]["us"]):
            against = (f"read floor {row['read_floor_us']:.2f}" if "read_floor_us" in row
                       else f"{row['vs_default']:.3f}x default")
            log.info("  %-16s %7.2f us  (p10 %.2f, p90 %.2f)  %s", name, row["us"], row["p10"], row["p90"], against)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
