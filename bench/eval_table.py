"""README table and the issue-7 target check from the eval throughput JSON files.

    python bench/eval_table.py bench/results/eval_llama-3-8b_g128.json bench/results/eval_llama-3-8b_g32.json \
        > bench/results/eval_speed.md
"""

from __future__ import annotations

import json
import sys

TARGETS = {1: 2.5, 8: 2.0, 32: 1.3}  # decode speed-up over bf16 by batch (group 128); prefill >= 0.9x everywhere


def main(paths: list[str]) -> None:
    runs = [json.load(open(p)) for p in paths]
    first = runs[0]["throughput"]
    env = first["environment"]
    s = first["settings"]
    lines = [f"{first['device']}, driver {env.get('driver')}, torch {env['torch']}, {env['dtype']} activations; "
             f"Llama-3-8B shapes with random weights (RTN-quantized), prompt {s['prompt_len']} + {s['gen_len']} decode "
             f"steps, static KV cache, CUDA graphs, median of {s['repeats']}; baseline: {first['baseline']}. "
             f"Command: `{runs[0]['command']}` (and `--group-size 32`).", "",
             "| group | attention | batch | prefill tok/s (bf16) | prefill ratio | decode tok/s (bf16) | decode ratio | target |",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        group = run["model"]["random_weights"]["group_size"]
        # quantkit.eval.attention from its introduction on; before it, transformers' SDPA repeated the cache per head
        attention = "grouped decode" if run["throughput"].get("attention") == "quantkit_grouped_sdpa" else "SDPA, cache repeated"
        for r in run["throughput"]["rows"]:
            target = TARGETS.get(r["batch"]) if group == 128 else None
            verdict = ""
            if target is not None:
                ok = r["decode_speedup"] >= target and r["prefill_speedup"] >= 0.9
                verdict = f"decode >= {target}x, prefill >= 0.9x: {'holds' if ok else 'no'}"
            lines.append(f"| {group} | {attention} | {r['batch']} | {r['prefill_tok_s']:,.0f} ({r['baseline_prefill_tok_s']:,.0f}) | "
                         f"{r['prefill_speedup']:.2f}x | {r['decode_tok_s']:,.1f} ({r['baseline_decode_tok_s']:,.1f}) | "
                         f"{r['decode_speedup']:.2f}x | {verdict} |")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
