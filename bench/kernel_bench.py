"""W4A16 kernel benchmark (issue 4): quantkit's kernel against cuBLAS bf16 (F.linear) and torch's int4 kernel
(torch._weight_int4pack_mm) in the same process, cold L2, CUDA graphs, median of repeats.

    python3 bench/kernel_bench.py --out bench/results/kernel_h100.json

Before timing, the kernels pass quantkit.kernels.self_check on this device and every contender's output on the
timed inputs is checked against the fp32 product of the same dequantized weights; a failed check stops the run.
Times include one graph replay's launch (no CPU dispatch). Bandwidth = bytes that must move (4-bit weights,
scales/zeros, activations, output) / time, over a device-to-device copy's read+write rate measured here.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import re
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from quantkit.eval import prefetch, run_settings
from quantkit.kernels import kernel_available, prepare, self_check, w4a16_linear
from quantkit.kernels import ops, testing

log = logging.getLogger("kernel_bench")

SHAPES = ((4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192), (8192, 28672))  # (N, K)
MS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)
GROUPS = (128, 32)
# --tune: the split-K sweep (every count, split-K through global memory and through a cluster) of the decode kernel
# at these M, and of the prefill kernel (wgmma on Hopper, else the staged one at M = 128) at those, where --ms has them
TUNE_STREAM_MS = (1, 2, 4, 8, 16, 32)
TUNE_PREFILL_MS = (64, 128, 256)


class CheckFailed(Exception):
    pass


def median_seconds(fn, runs: int = 20) -> float:
    """Median seconds of fn() over ``runs`` calls after two unmeasured ones, each timed alone by CUDA events."""
    times = []
    for _ in range(runs + 2):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return statistics.median(times[2:])


def copy_bandwidth(device) -> float:
    """Bytes read + written per second by a 1 GiB device-to-device copy (median of 20)."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    return 2 * a.numel() / median_seconds(lambda: b.copy_(a))


# --cache: the state of the L2 cache each timed call meets
CACHE_MODES = {
    "zero": "CUDA graph replay of one call after zeroing a 256 MB buffer (triton's do_bench flush; it leaves the L2 "
            "full of dirty lines, which the timed call then writes back)",
    "clean": "CUDA graph replay of one call after reading a 256 MB buffer (a cold L2 of clean lines, as a model's "
             "previous layers leave it)",
    "rotate": "CUDA graph replay of {copies} calls over {copies} copies of the layer (every contender's copies at "
              "least 4x the L2), no flush, time / calls",
}


def rep_orders(names: list, reps: int, seed: int = 0) -> list[list]:
    """The order the contenders run in at each repeat: a fresh shuffle each time (seeded), so that no contender always
    follows the same one (one timed right after a long call at full tensor load could otherwise meet a lower clock
    in every repeat)."""
    rng = random.Random(seed)
    return [rng.sample(names, len(names)) for _ in range(reps)]


def time_calls(fns: dict, flush: torch.Tensor, reps: int, cache: str = "zero", calls: int = 1,
               before: dict | None = None) -> dict:
    """Median / p10 / p90 microseconds of one call of each of ``fns`` (name -> callable), each replayed from its own
    CUDA graph, the contenders interleaved (rep_orders: every repeat runs each once, in a shuffled order). A callable
    makes ``calls`` calls (over as many copies of the layer with cache="rotate", no flush); else before every replay
    the L2 is flushed by zeroing ``flush`` (cache="zero") or by reading it (cache="clean"). before (name -> callable,
    optional): run after the flush and before that contender's timed replay, in stream order, untimed."""
    prepare = {"zero": flush.zero_, "clean": lambda: flush.view(torch.int64).sum(), "rotate": lambda: None}[cache]
    before = before or {}
    for fn in fns.values():  # every one once before any capture: a graph keeps the addresses of the buffers it was
        fn()  # captured with, so a workspace that a later contender grew (and freed) must not be one of them
    torch.cuda.synchronize()
    graphs = {}
    for name, fn in fns.items():
        graphs[name] = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graphs[name]):
            fn()
        graphs[name].replay()
    events = {name: [] for name in fns}
    for order in rep_orders(list(fns), reps):
        for name in order:
            prepare()
            if name in before:
                before[name]()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            graphs[name].replay()
            e.record()
            events[name].append((s, e))
    torch.cuda.synchronize()
    out = {}
    for name, times in events.items():
        us = sorted(s.elapsed_time(e) * 1e3 / calls for s, e in times)
        q = lambda f: us[min(len(us) - 1, int(f * len(us)))]
        out[name] = {"us": statistics.median(us), "p10": q(0.1), "p90": q(0.9)}
    return out


def time_call(fn, flush: torch.Tensor, reps: int, cache: str = "zero", calls: int = 1) -> dict:
    """time_calls of one callable."""
    return time_calls({"call": fn}, flush, reps, cache, calls)["call"]


def rotation_copies(wbytes: int, device) -> int:
    """Copies of a layer whose 4-bit weights (``wbytes`` each, the smallest form of any contender) fill the L2 4x."""
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 60 << 20
    return max(4, min(64, math.ceil(4 * l2 / wbytes)))


def cache_probe(flush: torch.Tensor, device, reps: int) -> list[dict]:
    """A plain read (a sum) of buffers from 8 MB to 512 MB timed after each kind of flush: what the L2's state alone
    costs a kernel that only reads, with no contender in it."""
    rows = []
    for mb in (8, 32, 128, 512):
        buf = torch.ones(mb << 17, dtype=torch.int64, device=device)  # mb MB
        read = lambda: buf.sum()
        row = {"MB": mb}
        for cache in ("zero", "clean"):
            row[cache] = time_call(read, flush, reps, cache)["us"]
        rows.append(row)
        log.info("read of %d MB: %.1f us after a zeroing flush, %.1f us after a reading flush", mb, row["zero"],
                 row["clean"])
    return rows


def write_json(path: str, result: dict) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def int4_pack(ql, device):
    """torch's int4 layout for the same codes: (q - 8) * scale + zero with zero = scale * (8 - our zero)."""
    codes = ql.codes.to(device).to(torch.int32)
    u8 = ((codes[:, ::2] << 4) | codes[:, 1::2]).to(torch.uint8)
    packed = torch._convert_weight_to_int4pack(u8, 8)
    s = ql.scales.to(device).float()
    z = s * (8.0 - ql.zeros.to(device).float())
    sz = torch.stack([s, z], dim=-1).to(torch.bfloat16).contiguous()  # [G, N, 2]
    return packed, sz


def check(name: str, y: torch.Tensor, truth: torch.Tensor, tol: float) -> float:
    err = float((y.float() - truth).norm() / truth.norm())
    if not math.isfinite(err) or err > tol:
        raise CheckFailed(f"{name}: relative error {err:.2e} > {tol:.1e} against the fp32 product; not timing it")
    return err


def contenders_of(x, packed, weight, int4, m, n, k, group, sms, device, tune, ws_probe=False, skip=None) -> dict:
    """Every contender at this M, each a call of no arguments on this copy of the layer; ws_probe: also the
    warp-specialized kernel's producer alone (ops.ws_probe, stream-K at its decode tile; probe_* contenders, whose
    output is not the product and is not checked); skip: a regular expression, the contenders whose names it finds
    left out (never cublas_bf16 or quantkit)."""
    contenders = {
        "cublas_bf16": lambda: F.linear(x, weight),
        "quantkit": lambda: w4a16_linear(x, packed, backend="kernel"),
        "qk_stream": lambda: w4a16_linear(x, packed, backend="mma", staged=False, wk=False),
        "qk_dequant": lambda: w4a16_linear(x, packed, backend="dequant"),
    }
    if ops.cluster_size(2, k, device, ops.CLUSTER_MAX):  # the dispatched kernel with split-K through global memory
        contenders["quantkit_nocluster"] = lambda: w4a16_linear(x, packed, backend="kernel", cluster=False)
    if ops.has_wgmma(device) and ops.wgmma_ws(m, n, k, sms):  # the dispatched warp-specialized kernel, launched
        # after the packing of x in stream order rather than as its programmatic dependent (ops.WS_PDL)
        contenders["quantkit_nopdl"] = lambda: w4a16_linear(x, packed, backend="kernel", pdl=False)
    if m >= 32:
        contenders["qk_staged"] = lambda: w4a16_linear(x, packed, backend="mma", staged=True)
    if m <= 32:  # the block's 4 warps share one tile and take turns over its chunks
        contenders["qk_stream_wk"] = lambda: w4a16_linear(x, packed, backend="mma", staged=False, wk=True)
    if m in (16, 32):
        contenders["qk_stream_mt1"] = lambda: w4a16_linear(x, packed, backend="mma", staged=False, mt=1, wk=False)
    if m == 32:  # two blocks of 16 tokens: fewer registers (more warps in flight), the weights read twice
        contenders["qk_stream_mt2"] = lambda: w4a16_linear(x, packed, backend="mma", staged=False, mt=2, wk=False)
    if ops.has_wgmma(device) and m <= 32:  # the warp-specialized kernel with 16 or 32 tokens a block
        for bt in (16, 32):
            contenders[f"qk_wgmma_ws_sk_bt{bt}"] = lambda bt=bt: w4a16_linear(x, packed, backend="wgmma", bt=bt,
                                                                              ws=True, stream_k=True)
            contenders[f"qk_wgmma_ws_bt{bt}"] = lambda bt=bt: w4a16_linear(x, packed, backend="wgmma", bt=bt,
                                                                           ws=True, stream_k=False)
        # its pipelined 32-token instance (ops.WS_PIPELINED_32), stream-K, beside qk_wgmma_ws_sk_bt32
        contenders["qk_wgmma_ws_sk_bt32_pipe"] = lambda: w4a16_linear(x, packed, backend="wgmma", bt=32, ws=True,
                                                                      stream_k=True, pipelined=True)
    if ops.has_wgmma(device) and m >= 16:
        contenders["qk_wgmma"] = lambda: w4a16_linear(x, packed, backend="wgmma", wsm=False, ws=False)
        contenders["qk_wgmma_wsm"] = lambda: w4a16_linear(x, packed, backend="wgmma", wsm=True, ws=False)
        contenders["qk_wgmma_ws"] = lambda: w4a16_linear(x, packed, backend="wgmma", ws=True, stream_k=False)
        # stream-K (ops.ws_stream_k, forced wherever it can run; its own tile, ops.ws_stream_k_bt)
        contenders["qk_wgmma_ws_sk"] = lambda: w4a16_linear(x, packed, backend="wgmma", ws=True, stream_k=True)
        if m > 32:  # the grid of the smallest tile that holds M (stream-K's tile rule; 256 above 128: ops.ws_split)
            bt = ops.ws_stream_k_bt(m)  # split 2-4 ways, its splits of a tile one cluster
            for splits in (2, 3, 4):
                contenders[f"qk_wgmma_ws_bt{bt}_s{splits}"] = lambda bt=bt, splits=splits: w4a16_linear(
                    x, packed, backend="wgmma", bt=bt, splits=splits, ws=True)
        if tune:
            for bt in (64, 128, 256):
                contenders[f"qk_wgmma_ws_sk_bt{bt}"] = lambda bt=bt: w4a16_linear(x, packed, backend="wgmma", bt=bt,
                                                                                  ws=True, stream_k=True)
            for bt in (64, 128, 256):
                contenders[f"qk_wgmma_bt{bt}"] = lambda bt=bt: w4a16_linear(x, packed, backend="wgmma", bt=bt,
                                                                            dense=False, wsm=False, ws=False)
            for bt in (64, 128):
                contenders[f"qk_wgmma_dense_bt{bt}"] = lambda bt=bt: w4a16_linear(x, packed, backend="wgmma", bt=bt,
                                                                                  dense=True, wsm=False, ws=False)
            for bt in (64, 128, 256):  # the warp-specialized kernel, and with its blocks sharing x where they can
                contenders[f"qk_wgmma_ws_bt{bt}"] = lambda bt=bt: w4a16_linear(x, packed, backend="wgmma", bt=bt,
                                                                               ws=True, stream_k=False)
                if ops.ws_multicast_fits(n, k, 1 if bt == 256 else ops.wgmma_splits(m, n, k, sms, bt)):
                    contenders[f"qk_wgmma_ws_bt{bt}_mc"] = lambda bt=bt: w4a16_linear(
                        x, packed, backend="wgmma", bt=bt, ws=True, multicast=True)
            for bt, dense in ((64, False), (64, True), (128, False), (128, True), (256, False)):
                contenders[f"qk_wgmma_wsm_bt{bt}{'_dense' if dense else ''}"] = (
                    lambda bt=bt, dense=dense: w4a16_linear(x, packed, backend="wgmma", bt=bt, dense=dense,
                                                            wsm=True, ws=False))
    if int4 is not None:
        contenders["torch_int4"] = lambda: torch._weight_int4pack_mm(x, int4[0], group, int4[1])
    if ws_probe and ops.has_wgmma(device) and m <= 32:  # beside qk_wgmma_ws_sk_bt{bt}, the same launch (above)
        bt = ops.ws_stream_k_bt(max(m, 9))
        for level, name in ((1, "wait"), (2, "read"), (3, "dequant"), (4, "nox")):
            contenders[f"probe_ws_{name}"] = lambda level=level: ops.ws_probe(x, packed, level, bt=bt, stream_k=True)
    if skip:
        contenders = {name: fn for name, fn in contenders.items()
                      if name in ("cublas_bf16", "quantkit") or not re.search(skip, name)}
    return contenders


# --l2-prefetch: every timed call waits this long after the flush (a spin kernel, about 20 us at the H200's clock:
# about what a batch-1 decode step's attention takes), and the contender quantkit_l2, the dispatched kernel, meets its
# layer's scales and first prefetch.MAX_BYTES of weights requested into the L2 (kernels.ops.l2_prefetch) before the
# wait: what a decode step's prefetch of the next linear can gain at most, on each shape
L2_WAIT_CYCLES = 40_000


def l2_prefetch_befores(names, packed, dtype) -> dict:
    """time_calls's ``before`` of --l2-prefetch: the wait for every contender of ``names``, the request first for
    quantkit_l2."""
    wait = lambda: torch.cuda._sleep(L2_WAIT_CYCLES)
    warm = lambda: (ops.l2_prefetch(packed, dtype, prefetch.MAX_BYTES), wait())
    return {name: warm if name == "quantkit_l2" else wait for name in names}


def bench_shape(n, k, group, ms, device, flush, reps, copy_bw, tune, cache="zero", l2_prefetch=False,
                ws_probe=False, skip=None) -> list[dict]:
    dtype = torch.bfloat16
    ql = testing.random_qlinear(n, k, group_size=group, sym=True, act_order=False, dtype=dtype, seed=n + k + group,
                                device=device)
    wbytes = n * k // 2 + (n * k // group) * 2
    copies = rotation_copies(wbytes, device) if cache == "rotate" else 1
    # (packed, bf16 weight, torch int4) per copy; copy 0 is also what the tuning sweeps time
    layers = [(prepare(ql, device=device, layouts=("mma",), keep_reference=False),
               ql.dequantize(dtype),  # the reference dequantization (QuantizedLinear.dequantize)
               int4_pack(ql, device) if hasattr(torch, "_weight_int4pack_mm") else None) for _ in range(copies)]
    packed, weight, _ = layers[0]
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    rows = []
    for m in ms:
        x = testing.random_activations(m, k, dtype=dtype, seed=m, device=device)
        truth = x.float() @ weight.float().T
        tol = testing.TOLERANCE[dtype]
        per_copy = [contenders_of(x, *layer, m, n, k, group, sms, device, tune, ws_probe, skip) for layer in layers]
        contenders = per_copy[0]
        if l2_prefetch:  # (copies == 1: main refuses --l2-prefetch with --cache rotate)
            contenders["quantkit_l2"] = contenders["quantkit"]
        nbytes = wbytes + m * k * 2 + m * n * 2
        row = {"N": n, "K": k, "group": group, "M": m, "bytes": nbytes, "path": ops.kernel_path(m, packed, x)[0],
               "copies": copies}
        timed, errs = {}, {}
        for name, fn in contenders.items():
            try:
                if name.startswith("probe_"):  # its output is not the product: run once, not checked
                    fn()
                    errs[name] = None
                else:
                    errs[name] = check(name, fn(), truth, tol if name != "torch_int4" else 2e-2)
            except CheckFailed as exc:
                if name == "torch_int4" or name.startswith("qk_wgmma_"):  # a baseline or tuning variant that fails
                    # its check is reported as such, never timed
                    row[name] = {"error": str(exc)}
                    continue
                raise
            timed[name] = (lambda name=name: [c[name]() for c in per_copy]) if copies > 1 else fn
        befores = l2_prefetch_befores(timed, packed, dtype) if l2_prefetch else None
        for name, t in time_calls(timed, flush, reps, cache, calls=copies, before=befores).items():  # interleaved
            t["err"] = errs[name]
            t["bw_frac"] = nbytes / (t["us"] * 1e-6) / copy_bw
            row[name] = t
        base = row["cublas_bf16"]["us"]
        for name in contenders:
            if "us" in row.get(name, {}):
                row[name]["speedup_vs_cublas"] = base / row[name]["us"]
        rows.append(row)
        log.info("N=%d K=%d g=%d M=%d: cublas %.1f us, int4 %s, quantkit %.1f us (%.2fx, %.0f%% bw) [%s]", n, k, group,
                 m, base, f"{row['torch_int4']['us']:.1f} us" if "us" in row.get("torch_int4", {}) else "n/a",
                 row["quantkit"]["us"], row["quantkit"]["speedup_vs_cublas"], 100 * row["quantkit"]["bw_frac"],
                 row["path"])
    tuned = []
    if tune:
        clusters = (False, True) if ops.cluster_size(2, k, device, ops.CLUSTER_MAX) else (False,)
        sweeps = [("stream", m) for m in TUNE_STREAM_MS if m in ms]  # at the run's M only
        sweeps += ([(kernel, m) for kernel in ("wgmma", "wgmma_ws") for m in TUNE_PREFILL_MS if m in ms]
                   if ops.has_wgmma(device) else [("staged", 128)] if 128 in ms else [])
        for kernel, m in sweeps:
            x = testing.random_activations(m, k, dtype=dtype, seed=m, device=device)
            truth = x.float() @ weight.float().T
            if kernel.startswith("wgmma"):
                ws = kernel == "wgmma_ws"
                bt = ops.wgmma_ws_bt(m, n, sms) if ws else ops.wgmma_bt(m, n)
                default, config = ops.wgmma_splits(m, n, k, sms, bt), {"bt": bt, "ws": ws}
                if ws and bt == 256:
                    default = ops.ws_split(m, n, k, sms)
                call = lambda splits, cl, bt=bt, ws=ws: w4a16_linear(x, packed, backend="wgmma", splits=splits, bt=bt,
                                                                     cluster=cl, ws=ws)
            else:
                staged = kernel == "staged"
                plan = ops.mma_plan(m, n, k, sms, staged=staged)
                wk, default, config = plan.wk, plan.splits, {"wk": plan.wk, "wk_warps": plan.warps}
                call = lambda splits, cl, staged=staged, wk=wk: w4a16_linear(x, packed, backend="mma", splits=splits,
                                                                             staged=staged, wk=wk, cluster=cl)
            for splits in sorted({1, 2, 4, 8, 16, 32, default}):
                for cl in clusters:
                    fn = lambda: call(splits, cl)
                    check(f"{kernel} splits={splits} cluster={cl}", fn(), truth, testing.TOLERANCE[dtype])
                    t = time_call(fn, flush, reps, "clean" if cache == "rotate" else cache)
                    tuned.append({"N": n, "K": k, "group": group, "M": m, "kernel": kernel, **config,
                                  "staged": kernel == "staged", "cluster": cl, "splits": splits,
                                  "grid_splits": ops.grid_splits(k, splits), **t, "default": splits == default})
    layers = per_copy = contenders = packed = weight = None  # free this shape's copies before the next
    torch.cuda.empty_cache()
    return rows, tuned


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--groups", default=",".join(map(str, GROUPS)))
    ap.add_argument("--shapes", default=";".join(f"{n}x{k}" for n, k in SHAPES))
    ap.add_argument("--cache", choices=tuple(CACHE_MODES), default="zero", help="the L2 state each timed call "
                    "meets: zero (flush by zeroing a 256 MB buffer, the default), clean (flush by reading it), rotate "
                    "(no flush, many calls over copies of the layer in one graph; the tuning sweeps then flush clean)")
    ap.add_argument("--l2-prefetch", action="store_true", help="also time the dispatched kernel with its layer's "
                    "weights requested into the L2 before the call (quantkit_l2), every contender waiting about 20 us "
                    "after the flush; needs --cache zero or clean")
    ap.add_argument("--tune", action="store_true", help="also sweep the split-K count (for ops.mma_splits and "
                    "ops.wgmma_splits), with and without clusters")
    ap.add_argument("--ws-probe", action="store_true", help="at M <= 32 also time the warp-specialized kernel's "
                    "producer alone, its consumers only waiting for each stage (probe_ws_wait), also reading their "
                    "weights and scales (probe_ws_read), also dequantizing them (probe_ws_dequant), or the producer "
                    "copying no x (probe_ws_nox): ops.ws_probe, not the product")
    ap.add_argument("--skip", help="a regular expression: leave out the contenders whose names it finds (not "
                    "cublas_bf16 or quantkit), e.g. one that hung or failed on this device")
    args = ap.parse_args(argv)
    if args.l2_prefetch and args.cache == "rotate":
        ap.error("--l2-prefetch times one call after a flush: use it with --cache zero or clean")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    ok, reason = kernel_available()
    if not ok:
        log.error("no kernel to benchmark: %s", reason)
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    t0 = time.time()
    try:
        self_check(device, force=True)
    except Exception as exc:
        log.error("%s", exc)
        return 3
    log.info("self-check passed in %.1f s", time.time() - t0)
    copy_bw = copy_bandwidth(device)
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    result = {
        "command": run_settings.with_settings("python3 bench/kernel_bench.py "
                                              + " ".join(argv if argv is not None else sys.argv[1:])),
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "copy_bandwidth_Bps": copy_bw, "reps": args.reps, "dtype": "bfloat16", "sym": True,
        "cache": args.cache,
        "timing": CACHE_MODES[args.cache].format(copies="R") + (
            f", then a wait of {L2_WAIT_CYCLES} cycles (quantkit_l2: its weights requested into the L2 first)"
            if args.l2_prefetch else "") + ", CUDA events, median of reps, the contenders of a "
                  "shape and M interleaved (each repeat runs every one once, in a shuffled order)",
        "results": [], "tune": [],
    }
    log.info("device %s, copy bandwidth %.2f TB/s (read+write)", result["device"], copy_bw / 1e12)
    result["cache_probe"] = cache_probe(flush, device, args.reps)
    ms = [int(v) for v in args.ms.split(",")]
    try:
        for group in (int(g) for g in args.groups.split(",")):
            for shape in args.shapes.split(";"):
                n, k = (int(v) for v in shape.split("x"))
                rows, tuned = bench_shape(n, k, group, ms, device, flush, args.reps, copy_bw,
                                           args.tune and group == 128, args.cache, args.l2_prefetch, args.ws_probe,
                                           args.skip)
                result["results"] += rows
                result["tune"] += tuned
                write_json(args.out, result)  # after every shape: a run cut short keeps what it measured
    except CheckFailed as exc:
        log.error("check failed, no figures reported: %s", exc)
        return 4
    write_json(args.out, result)  # also when no shape ran
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
