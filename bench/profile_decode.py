"""Where a decode step's time goes: the GPU kernels of one step of `quantkit eval --throughput`, by kind.

    python3 bench/profile_decode.py --out bench/results/decode_profile_h100.json [--batch 1,8,32] [--compile]

Builds the same random-weight model as `quantkit eval --random-weights` (kernel backend, and its bf16 baseline),
captures the same decode step (quantkit.eval.throughput.Runner), and for each model and batch size reports:
the graph-replayed step's time (median of --reps replays, CUDA events), the sum of the step's kernel times
(torch.profiler over eager steps), the gap between the two (launch gaps inside the graph), and the kernel time by
kind (our W4A16 kernels, cuBLAS GEMMs, attention, the rest: norms, rotary, cache writes, casts...), and the
kernel time of each linear by its role in a decoder block (q/k/v, o, gate/up, down; lm_head), summed over the blocks:
every kernel that the linear's op launched (a compiled step's opaque quantized linear, a bf16 matmul), so that a
change to one kind of layer shows where it lands. Steps whose quantized linears are not ops of their own (eager
steps) have no such breakdown; the row says why.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import namedtuple
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantkit.atomic import atomic_file  # noqa: E402
from quantkit.eval import (  # noqa: E402
    attention, backends, decode_attention, fuse, greedy, prefetch, random_weights, run_settings, throughput,
)

# One step profiled: the model's row name, the model, and what its step runs with (ops.STREAM_PDL,
# throughput.COMPILED_X_IMAGE, the L2 prefetch mode, ops.WS_PIPELINED_32, inductor's combo kernels).
Variant = namedtuple("Variant", "name model pdl image mode pipe combo glu")

KINDS = (  # first match wins
    ("l2_prefetch", re.compile(r"l2_prefetch")),
    ("w4a16", re.compile(r"qk_")),
    ("gemm", re.compile(r"gemm|gemv|nvjet|cutlass|xmma|cublas", re.I)),
    ("attention", re.compile(r"flash|fmha|attention|sdpa|softmax|split_kv", re.I)),
    ("other", re.compile(r"")),
)


# The ops a linear of the step is, as the profiler names them: our opaque quantized linears (compiled steps; a q/k/v
# with its rotary epilogue, quantized_rope_qkv, too) and torch's (bf16 layers, lm_head); the outermost of them counts,
# with every kernel it launched. (quantized_mlp, two linears in one op, is left out: by_linear says so.)
LINEAR_OPS = frozenset({"quantkit_eval::quantized_linear", "quantkit_eval::quantized_linear_image",
                        "quantkit_eval::quantized_linear_folded", "quantkit_eval::quantized_linear_folded_into",
                        "quantkit_eval::quantized_rope_qkv", "aten::linear", "aten::addmm", "aten::mm"})


def kind_of(name: str) -> str:
    return next(k for k, rx in KINDS if rx.search(name))


def _linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The model's linears (leaf modules with in_features and out_features), by name, in module order."""
    return [(name, m) for name, m in model.named_modules()
            if hasattr(m, "in_features") and hasattr(m, "out_features") and next(m.children(), None) is None]


def linear_roles(model: torch.nn.Module) -> list[str]:
    """The model's linears in the order a step runs them (module order, as quantkit.eval.prefetch relies on too),
    each named by its role: its module name after the decoder block's index ("self_attn.o_proj"; "lm_head"; a folded
    block's o_proj, quantkit.eval.fuse.DeferredProjection's inner, by the same name)."""
    return [re.sub(r"^.*?\blayers\.\d+\.", "", re.sub(r"\.o_proj\.inner$", ".o_proj", name)) for name, _ in _linears(model)]


def linear_shapes(model: torch.nn.Module) -> frozenset[tuple[int, int]]:
    """The model's linears' weight shapes, each as its two sizes in ascending order (by_linear's filter)."""
    return frozenset(tuple(sorted((m.in_features, getattr(getattr(m, "packed", None), "out_features", m.out_features))))
                     for _, m in _linears(model))  # (a gated pair's product has both halves' rows)


def _is_linear(ev, shapes: frozenset[tuple[int, int]] | None) -> bool:
    return (shapes is None or ev.name.startswith("quantkit_eval::")
            or any(len(s) == 2 and tuple(sorted(s)) in shapes for s in ev.input_shapes))


def _outermost_linear_ops(events) -> list:
    """The CPU events of LINEAR_OPS that no other LINEAR_OPS event encloses, in the order they started."""
    def outermost(ev) -> bool:
        parent = ev.cpu_parent
        while parent is not None:
            if parent.name in LINEAR_OPS:
                return False
            parent = parent.cpu_parent
        return True

    return sorted((ev for ev in events if ev.device_type == torch.autograd.DeviceType.CPU and ev.name in LINEAR_OPS
                   and outermost(ev)), key=lambda ev: ev.time_range.start)


def by_linear(events, roles: list[str], steps: int, shapes: frozenset[tuple[int, int]] | None = None) -> dict | str:
    """Kernel microseconds per step of the linears of each role (summed over the blocks) and their calls per step,
    from the profiler's op events of ``steps`` steps: the outermost LINEAR_OPS, in the order they ran, are the
    linears of ``roles`` step after step. With ``shapes`` (linear_shapes; the events recorded with their shapes), a
    torch op counts only where one of its inputs is 2-D with the sizes of one of them: a compiled step can hold
    other matrix products (at batch 1 on the H200, one such op a step more than the model has linears;
    not_linears lists them). Where the number counted is not steps x len(roles), a line saying so."""
    ops = [ev for ev in _outermost_linear_ops(events) if _is_linear(ev, shapes)]
    if not roles or len(ops) != steps * len(roles):
        return (f"{len(ops)} linear ops in {steps} steps of {len(roles)} linears: not one op a linear (in eager steps "
                "the W4A16 kernels run as no op of their own)")
    totals: dict[str, list] = {}
    for i, ev in enumerate(ops):
        entry = totals.setdefault(roles[i % len(roles)], [0.0, 0])
        entry[0] += ev.device_time_total / steps
        entry[1] += 1
    return {role: {"us": round(us, 1), "calls": calls // steps} for role, (us, calls) in totals.items()}


def not_linears(events, steps: int, shapes: frozenset[tuple[int, int]]) -> dict:
    """The matrix products by_linear leaves out for their shapes: each distinct name with its input shapes, and their
    kernel microseconds per step."""
    left = [ev for ev in _outermost_linear_ops(events) if not _is_linear(ev, shapes)]
    return {"ops": sorted({f"{ev.name} {ev.input_shapes}" for ev in left}),
            "us": round(sum(ev.device_time_total for ev in left) / steps, 1)}


def profile_steps(runner: throughput.Runner, steps: int, roles: list[str],
                  shapes: frozenset[tuple[int, int]]) -> tuple[dict, list, dict | str, dict]:
    """Kernel microseconds per decode step by kind, the top kernels, by_linear's breakdown and not_linears, over
    ``steps`` eager steps of a model whose linears are ``roles`` (linear_roles) of ``shapes`` (linear_shapes)."""
    from torch.profiler import ProfilerActivity, profile

    runner.reset()
    runner._prefill()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for _ in range(steps):
            runner._decode()
        torch.cuda.synchronize()
    kinds, top = kernels_by_kind(prof.events(), steps)
    return (kinds, top, by_linear(prof.events(), roles, steps, shapes), not_linears(prof.events(), steps, shapes))


def kernels_by_kind(events, steps: int) -> tuple[dict, list]:
    """Kernel microseconds and launches per step by kind (KINDS), and the 12 kernels of most time, from the
    profiler's device events of ``steps`` steps. A device-side annotation (a record_function's range on the GPU, as
    inductor's "## Call CompiledFxGraph ... ##" around a whole compiled step) is no kernel and does not count."""
    by_kind: dict[str, float] = {k: 0.0 for k, _ in KINDS}
    counts: dict[str, int] = {k: 0 for k, _ in KINDS}
    per_name: dict[str, list] = {}
    for ev in events:
        if ev.device_type != torch.autograd.DeviceType.CUDA or getattr(ev, "is_user_annotation", False):
            continue
        us = ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
        k = kind_of(ev.name)
        by_kind[k] += us / steps
        counts[k] += 1
        entry = per_name.setdefault(ev.name[:120], [0.0, 0])
        entry[0] += us / steps
        entry[1] += 1
    top = sorted(([n, round(t, 1), c // steps] for n, (t, c) in per_name.items()), key=lambda r: -r[1])[:12]
    return {k: {"us": round(v, 1), "kernels": counts[k] // steps} for k, v in by_kind.items()}, top


def replay_us(runner: throughput.Runner, reps: int) -> float:
    runner.reset()
    runner.prefill()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        runner.decode()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
        if runner.pos.item() >= runner.s.prompt_len + runner.s.gen_len - 1:
            runner.reset()
            runner.prefill()
    return statistics.median(times)


def parse_mode(spec: str) -> tuple[str, bool, bool] | None:
    """--l2-prefetch's "MODE[+launch|+evict]" as (mode, by launches of their own, the requesting kernels' own weights
    evict-first); None where it is not one."""
    mode, *flags = spec.split("+")
    if mode not in prefetch.MODES or len(flags) > 1 or any(f not in ("launch", "evict") for f in flags):
        return None
    return mode, "launch" in flags, "evict" in flags


def save(result: dict, out: str) -> None:
    """The JSON as it stands, replacing the file whole (quantkit.atomic: written beside it, then renamed)."""
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="llama-3-8b")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--batch", default="1,8,32")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5, help="eager steps profiled")
    ap.add_argument("--reps", type=int, default=50, help="graph replays timed")
    ap.add_argument("--compile", action="store_true", help="torch.compile the decode step, as eval --compile")
    ap.add_argument("--quantize-lm-head", action="store_true")
    ap.add_argument("--pdl", choices=("off", "on", "both"), default="off",
                    help="the streaming kernel as a programmatic dependent launch (ops.STREAM_PDL = True); both: the "
                    "quantized model's step captured and measured without it (model 'quantized') and with it "
                    "('quantized_pdl'), one after the other in the same run")
    ap.add_argument("--plain-sdpa", action="store_true",
                    help="transformers' SDPA as it is (cache repeated per query head) instead of quantkit.eval.attention")
    ap.add_argument("--decode-attention", choices=attention.DECODE_KERNELS,
                    default=throughput.Settings.decode_attention,
                    help="what the decode step's attention runs, as eval --decode-attention")
    ap.add_argument("--x-image", choices=("off", "on", "both"), default="on",
                    help="compiled steps: the warp-specialized kernel's image of x made by inductor's kernel that makes "
                    "x (throughput.COMPILED_X_IMAGE); both: the quantized step also without it ('quantized_packx', its "
                    "own packing launch), one after the other in the same run")
    ap.add_argument("--ws-pipelined", choices=("off", "on", "both"), default=None,
                    help="the warp-specialized kernel's pipelined 32-token instance (ops.WS_PIPELINED_32; default: as "
                    "QUANTKIT_WS_PIPELINED_32 sets it); both: the quantized step also with it on ('quantized_pipe'), "
                    "one after the other in the same run")
    ap.add_argument("--combo", choices=("off", "on", "both"), default=None,
                    help="compiled steps: inductor's combo kernels in both models (throughput.COMBO_KERNELS; default: "
                    "as QUANTKIT_COMBO_KERNELS sets it, on unless 0); both: the two models' steps also compiled the "
                    "other way ('quantized_combo_off' and 'baseline_combo_off', or _on), one after the other in the "
                    "same run")
    ap.add_argument("--glu-epilogue", choices=("off", "on", "both"), default=None,
                    help="the 4-bit model's gated pairs (--fuse) with their SiLU and multiply in the decode kernel's "
                    "epilogue and down as its programmatic launch (ops.GLU_EPILOGUE and fuse.GLU_PDL; default: as "
                    "QUANTKIT_GLU_EPILOGUE sets it, on unless 0), or off (torch's ops after the kernel, down a plain "
                    "launch); both: the quantized step also the other way ('quantized_glu_off' or _on), one after the "
                    "other in the same run")
    ap.add_argument("--l2-prefetch", default=None,
                    help="comma-separated modes of quantkit.eval.prefetch (off, attention, next; +launch: the requests "
                    "by a launch of their own after each kernel, ops.L2_PREFETCH_IN_KERNEL off; or +evict: from the "
                    "kernel, which reads its own weights evict-first, ops.L2_PREFETCH_EVICT_FIRST) the quantized step is "
                    "captured and measured with, one after the other in the same run (model 'quantized' for the first, "
                    "'quantized_<mode>' for the others); default: prefetch.MODE alone")
    ap.add_argument("--fuse", action="store_true",
                    help="q/k/v and gate/up as one linear each in both models, as eval does (quantkit.eval.fuse)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    for mode in args.l2_prefetch.split(",") if args.l2_prefetch else ():
        if parse_mode(mode) is None:
            ap.error(f"--l2-prefetch takes {', '.join(prefetch.MODES)}, each optionally +launch or +evict; got {mode!r}")
    device, dtype = "cuda", torch.bfloat16
    from quantkit.kernels import ops

    settings = throughput.Settings(batches=throughput.parse_batches(args.batch), prompt_len=args.prompt_len,
                                   gen_len=args.gen_len, compile=args.compile).validate()
    model, base, info = random_weights.build(args.config, group_size=args.group_size, dtype=dtype, device=device,
                                             module_factory=backends.kernel_factory(device),
                                             quantize_lm_head=args.quantize_lm_head)
    result = {"command": run_settings.with_settings("python3 bench/profile_decode.py " + " ".join(sys.argv[1:])),
              "environment": throughput.environment(device, dtype), "model": info, "runs": []}
    if args.fuse:
        result["fused_projections"] = {name: fuse.fuse_projections(m) for name, m in (("quantized", model),
                                                                                     ("baseline", base))}
    vocab = model.config.vocab_size
    # each model's linears by role and their shapes, before the quantized ones are wrapped as ops
    linears_of = {id(m): (linear_roles(m), linear_shapes(m)) for m in (model, base)}
    # the down projections that fuse made programmatic launches after a gated pair (before they are wrapped as ops)
    after_pairs = [mlp.down_proj for mlp in model.modules()
                   if isinstance(mlp, fuse.FusedGatedMLP) and getattr(mlp.down_proj, "pdl", None)]
    grouped = (nullcontext() if args.plain_sdpa
               else attention.grouped_decode_attention(model, base, decode_kernel=args.decode_attention))
    with grouped, throughput.opaque_quantized_linears(model) if args.compile else nullcontext():
        result["attention"] = model.config._attn_implementation
        result["decode_attention"] = attention.decode_kernel_of(model)
        result["greedy_token"] = greedy.record(device)  # as the eval records it
        combo = throughput.COMBO_KERNELS if args.combo in (None, "both") else args.combo == "on"
        if args.compile:
            result["combo_kernels"] = combo  # recorded from session 39 on; each row records its own too
            result["inductor_pdl"] = throughput.inductor_pdl()  # from session 41 on (fuse.INDUCTOR_PDL)
        result["split_kv_settings"] = decode_attention.settings()  # from session 41 on (its PDL among them)
        # the quantized model's kernels read ops.STREAM_PDL as its step is captured, its opaque linears
        # throughput.COMPILED_X_IMAGE as it is traced
        pdl, image = args.pdl == "on", args.x_image != "off"
        pipe = ops.WS_PIPELINED_32 if args.ws_pipelined in (None, "both") else args.ws_pipelined == "on"
        modes = (args.l2_prefetch or prefetch.MODE).split(",")
        # the baseline second, so that a run cut short by a time limit still has both models' steps; each other
        # variant says only how it differs from the quantized model's
        glu = ops.GLU_EPILOGUE if args.glu_epilogue in (None, "both") else args.glu_epilogue == "on"
        result["glu_epilogue"] = glu
        quantized = Variant("quantized", model, pdl, image, modes[0], pipe, combo, glu)
        baseline = quantized._replace(name="baseline", model=base, mode="off")
        variants = [quantized, baseline]
        if args.x_image == "both":
            variants.append(quantized._replace(name="quantized_packx", image=False))
        if args.pdl == "both":
            variants.append(quantized._replace(name="quantized_pdl", pdl=True))
        if args.ws_pipelined == "both":
            variants.append(quantized._replace(name="quantized_pipe", pipe=True))
        variants += [quantized._replace(name=f"quantized_{mode}", mode=mode) for mode in modes[1:]]
        if args.glu_epilogue == "both":
            variants.append(quantized._replace(name=f"quantized_glu_{'off' if glu else 'on'}", glu=not glu))
        if args.combo == "both":  # each model the other way too; profile_table pairs the two by their suffix
            other = f"combo_{'off' if combo else 'on'}"
            variants += [v._replace(name=f"{v.name}_{other}", combo=not combo) for v in (quantized, baseline)]
        decoders = {}  # one compiled step per model, combo and glu setting, each compiled on first use
        for v in variants:
            if args.compile and (id(v.model), v.combo, v.glu) not in decoders:
                decoders[id(v.model), v.combo, v.glu] = throughput._compiled(v.model, "inductor", combo_kernels=v.combo)
        for name, m, pdl, image, mode, pipe, c, glu in variants:
            decoder = decoders.get((id(m), c, glu))
            ops.STREAM_PDL, throughput.COMPILED_X_IMAGE, ops.WS_PIPELINED_32 = pdl, image, pipe
            ops.GLU_EPILOGUE = glu
            for down in after_pairs:
                down.pdl = True if glu else None
            warm_mode, launch, evict = parse_mode(mode)
            ops.L2_PREFETCH_IN_KERNEL = not launch
            with prefetch.warmed(model, warm_mode, evict_first=evict) as pairs:
                for batch in settings.batches:
                    prompt = torch.randint(0, vocab, (batch, args.prompt_len), device=device)
                    runner = throughput.Runner(m, batch=batch, settings=settings, prompt=prompt, decode_model=decoder)
                    # from session 54 on (throughput.SHARED_CACHE_POSITION), alike in every runner
                    result["shared_cache_position"] = runner.shared_cache_layers > 0
                    # from session 55 on (attention.ROPE_IN_ATTENTION), alike in every runner
                    result["rope_in_attention"] = (runner.shared_cache_layers > 0
                                                   and attention.rope_in_attention_of(m))
                    # from session 58 on (fuse.ROPE_IN_QKV): this model's steps at this batch
                    rope_qkv = runner.shared_cache_layers > 0 and attention.rope_in_qkv_of(m, batch)
                    with torch.inference_mode():
                        runner.prepare()
                        step = replay_us(runner, args.reps)
                        kinds, top, linears, others = profile_steps(runner, args.steps, *linears_of[id(m)])
                    runner.close()
                    kernels = sum(v["us"] for v in kinds.values())
                    row = {"model": name, "batch": batch, "rope_in_qkv": rope_qkv,
                           "graph_step_us": round(step, 1), "kernel_us": round(kernels, 1),
                           "gap_us": round(step - kernels, 1), "kernels": sum(v["kernels"] for v in kinds.values()),
                           "by_kind": kinds, "by_linear": linears, "not_linears": others, "top": top, "x_image": bool(args.compile and image and m is model),
                           "l2_prefetch": {**prefetch.settings(), "mode": warm_mode,
                                           "pairs": len(pairs)}, "ws_pipelined_32": pipe and m is model,
                           "combo_kernels": bool(args.compile and c), "glu_epilogue": glu and m is model}
                    result["runs"].append(row)
                    save(result, args.out)  # after every row: a run cut short keeps what it measured
                    print(f"{name:13s} batch {batch:3d}: step {step:8.1f} us, kernels {kernels:8.1f} us "
                          f"({row['kernels']} launches), " + ", ".join(f"{k} {v['us']:.0f}" for k, v in kinds.items()),
                          flush=True)
                    torch.cuda.empty_cache()
    for row in result["runs"]:
        print(f"\n{row['model']} batch {row['batch']} top kernels (us/step, launches/step):")
        for n, t, c in row["top"]:
            print(f"  {t:8.1f} {c:4d}  {n}")
        linears = row["by_linear"]
        print("  linears by role (us/step): " + (", ".join(f"{r} {v['us']:.0f} ({v['calls']})" for r, v in linears.items())
                                              if isinstance(linears, dict) else linears))
        if row["not_linears"]["ops"]:
            print(f"  products left out ({row['not_linears']['us']:.0f} us/step): " + "; ".join(row["not_linears"]["ops"]))


if __name__ == "__main__":
    main()
