"""README table and the issue-7 target check from the eval throughput JSON files.

    python bench/eval_table.py bench/results/eval_llama-3-8b_g128.json bench/results/eval_llama-3-8b_g128_compiled.json \
        bench/results/eval_llama-3-8b_g128_compiled_lm_head.json bench/results/eval_llama-3-8b_g32.json \
        > bench/results/eval_speed.md

A file given as PATH@COMMIT adds a column naming the commit whose kernels and dispatch that run measured.
"""

from __future__ import annotations

import json
import sys

from quantkit.eval import prefetch
from quantkit.eval.report import projections_fused

TARGETS = {1: 2.5, 8: 2.0, 32: 1.3}  # decode speed-up over bf16 by batch (group 128)
PREFILL_TARGET = 0.9  # prefill speed-up over bf16, at every batch of TARGETS


def setup(run: dict) -> str:
    """How both models ran (and the quantized model's lm_head when it is 4-bit too): attention
    (quantkit.eval.attention from its introduction on; before it transformers' SDPA repeated the cache per head) and
    the split-KV kernel's split count rounding, fused projections (quantkit.eval.fuse; the 4-bit model's gated pairs
    with their SiLU and multiply in the kernel, kernels.ops.GLU_EPILOGUE), torch.compile'd decode step,
    who packed x for the warp-specialized kernel in it (throughput.COMPILED_X_IMAGE), inductor's combo kernels
    (throughput.COMBO_KERNELS), the greedy
    token's two stages or one launch (quantkit.eval.greedy), the cache layers writing at the runner's position
    (throughput.SHARED_CACHE_POSITION) with the rotary embedding and cache write in the attention kernel
    (attention.ROPE_IN_ATTENTION), its pipelined 32-token instance
    (kernels.ops.WS_PIPELINED_32), the linears' L2 prefetch (quantkit.eval.prefetch), the split-KV ranges combined by the
    last of them to finish (decode_attention.FUSED_COMBINE), the 4-bit blocks' folded norms (fuse.NORM_FOLD), the
    4-bit MLP in one launch (kernels.ops.FUSED_MLP) and the decode kernel's blocks of 8 warps
    (kernels.ops.STREAM_WK_WARPS_ONE_TILE) where they were on."""
    t = run["throughput"]
    parts = ["SDPA, cache repeated" if t.get("attention") != "quantkit_grouped_sdpa"
             else "split-KV decode attention" if t.get("decode_attention") == "split" else "grouped decode attention"]
    fused = (t.get("fused_projections") or {}).get("quantized", {})
    if "split_kv_settings" in t:  # recorded from e7c49e1 on; PDL (decode_attention.PDL) from session 41 on
        pdl = t["split_kv_settings"].get("PDL") and (
            ", programmatic launches into the 4-bit o_proj" if fused.get("o_proj_pdl") else ", programmatic launches")
        combine = ", ranges combined by the last to finish" if t["split_kv_settings"].get("FUSED_COMBINE") else ""
        parts[0] += f" (split count rounded {t['split_kv_settings']['SPLITS_ROUND']}{pdl or ''}{combine})"
    if projections_fused(t):
        parts.append("fused q/k/v, gate/up")
    if fused.get("glu") and t.get("glu_epilogue"):  # gated pairs (fuse) and kernels.ops.GLU_EPILOGUE, from session 40
        parts.append("4-bit gate/up's SiLU and multiply in its kernel"
                     + (" (the warp-specialized one's too)" if t.get("glu_ws") else "")
                     + (", down as its programmatic launch" if fused.get("glu_pdl") else ""))
        if t.get("fused_mlp"):  # kernels.ops.FUSED_MLP, from session 45 on
            parts.append("4-bit gate/up and down in one launch up to 8 rows")
    if fused.get("norm_fold"):  # fuse.NORM_FOLD (QUANTKIT_NORM_FOLD=1), from session 44 on
        rows = fused["norm_fold_rows"]
        parts.append(f"4-bit residual adds and RMSNorms folded into the kernels up to {rows} token(s)"
                     + (", o_proj's sums of squares to gate/up" if fused.get("norm_fold_ss") else "")  # session 52
                     # down's to the next q/k/v: from session 53 on (norm_fold_ss_down recorded from 49b7998 on)
                     + (" and down's to q/k/v" if fused.get("norm_fold_ss_down", fused.get("norm_fold_ss")) else ""))
    parts.append("torch.compile" if t.get("compiled_decode") else "eager ops")
    if "compiled_x_image" in t:  # recorded from fccb3ab on
        parts.append("ws kernel's x packed by " + ("inductor" if t["compiled_x_image"] else "its own launch"))
    if t.get("combo_kernels"):  # throughput.COMBO_KERNELS (on by default from session 39)
        parts.append("inductor's combo kernels")
    if t.get("inductor_pdl"):  # fuse.INDUCTOR_PDL, from session 41 on
        parts.append("programmatic launches through the step" + (
            " (4-bit q/k/v and gate/up too)" if fused.get("norm_pdl") else ""))
    if t.get("greedy_token"):  # recorded from session 38 on (quantkit.eval.greedy), "one launch" from session 55
        parts.append(f"greedy token in {t['greedy_token']}")
    if t.get("shared_cache_position"):  # throughput.SHARED_CACHE_POSITION, from session 54 on
        parts.append("one cache position for every layer")
    if t.get("rope_in_attention"):  # attention.ROPE_IN_ATTENTION, from session 55 on
        parts.append("rotary embedding and cache write in the attention kernel")
    if t.get("stream_wk_warps_one_tile") == 8:  # kernels.ops.STREAM_WK_WARPS_ONE_TILE, recorded from session 48 on
        parts.append("decode kernel in blocks of 8 warps at one token tile")
    if t.get("ws_pipelined_32"):  # QUANTKIT_WS_PIPELINED_32=1 (kernels.ops.WS_PIPELINED_32)
        parts.append("ws kernel's 32-token instance pipelined")
    if prefetch.describe(t.get("l2_prefetch")):  # recorded from 087be6e on
        parts.append(prefetch.describe(t["l2_prefetch"]))
    if run["model"]["random_weights"].get("lm_head_quantized"):
        parts.append("**lm_head 4-bit too** (--quantize-lm-head)")
    return ", ".join(parts)


def ratio(value: float, target: float | None) -> str:
    """A speed-up as the table prints it: two decimals, or more where two would round it onto or over a target it
    misses (2.497 against 2.5: "2.497x", not "2.50x")."""
    places = 2
    while target is not None and value < target <= round(value, places) and places < 6:
        places += 1
    return f"{value:.{places}f}x"


def main(args: list[str]) -> None:
    paths = [a.rpartition("@")[0] or a for a in args]
    commits = [a.rpartition("@")[2] if "@" in a else "" for a in args]
    runs = [json.load(open(p)) for p in paths]
    first = runs[0]["throughput"]
    env = first["environment"]
    s = first["settings"]
    lines = [f"{first['device']}, driver {env.get('driver')}, torch {env['torch']}, {env['dtype']} activations; "
             f"Llama-3-8B shapes with random weights (RTN-quantized), prompt {s['prompt_len']} + {s['gen_len']} decode "
             f"steps, static KV cache, CUDA graphs, median of {s['repeats']}; baseline: {first['baseline']}. "
             "Commands: " + "; ".join(f"`{c}`" for c in dict.fromkeys(run["command"] for run in runs)) + ".", "",
             ("| kernels " if any(commits) else "") + "| group | setup (both models) | batch | prefill tok/s (bf16) | "
             "prefill ratio | decode tok/s (bf16) | decode ratio | target |",
             ("|---" if any(commits) else "") + "|---|---|---|---|---|---|---|---|"]
    for run, commit in zip(runs, commits):
        group = run["model"]["random_weights"]["group_size"]
        for r in run["throughput"]["rows"]:
            target = TARGETS.get(r["batch"]) if group == 128 else None
            verdict = ""
            if target is not None:
                ok = r["decode_speedup"] >= target and r["prefill_speedup"] >= PREFILL_TARGET
                verdict = f"decode >= {target}x, prefill >= {PREFILL_TARGET}x: {'holds' if ok else 'no'}"
            lead = f"| {commit} " if any(commits) else ""
            lines.append(lead + f"| {group} | {setup(run)} | {r['batch']} | "
                         f"{r['prefill_tok_s']:,.0f} ({r['baseline_prefill_tok_s']:,.0f}) | "
                         f"{ratio(r['prefill_speedup'], None if target is None else PREFILL_TARGET)} | "
                         f"{r['decode_tok_s']:,.1f} ({r['baseline_decode_tok_s']:,.1f}) | "
                         f"{ratio(r['decode_speedup'], target)} | {verdict} |")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
