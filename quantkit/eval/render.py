"""Plain renderings of eval results for the terminal (the Markdown report is quantkit.eval.report)."""

from __future__ import annotations


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def perplexity_table(result: dict) -> str:
    """The "perplexity" section (or a bare perplexity result) as text."""
    rows = [("model", "perplexity", "± stderr")]
    if "baseline" in result:
        rows.append(("baseline", f"{result['baseline']['ppl']:.3f}", f"{result['baseline']['stderr']:.3f}"))
    rows.append(("quantized", f"{result['quantized']['ppl']:.3f}", f"{result['quantized']['stderr']:.3f}"))
    backend = f" through {result['backend']}" if result.get("backend") else ""
    head = f"{result['text']}: {result['windows']} windows of {result['ctx']} tokens on {result['device']}{backend}"
    lines = [head] + _table(rows)
    if result.get("kl_divergence") is not None:
        lines.append(f"KL divergence from the baseline: {result['kl_divergence']:.6f} ± {result['kl_divergence_stderr']:.6f} "
                     f"(p99 {result['kl_divergence_p99']:.4f}, max {result['kl_divergence_max']:.4f})")
        lines.append(f"top-1 agreement with the baseline: {100 * result['top1_agreement']:.2f}% "
                     f"± {100 * result['top1_agreement_stderr']:.2f}%")
    return "\n".join(lines)


CHECK_FIGURES = ("kl_divergence", "top1_agreement", "prob_rel_error", "logits_rel_error")


def check_figures(check: dict, label=lambda key: key) -> str:
    """A throughput check's figures, and over how many positions its distributions were compared: the first decode
    step's check compares one position a batch row, so at batch 1 its top-1 agreement is 0 or 1."""
    figures = ", ".join(f"{label(k)} {check[k]}" for k in CHECK_FIGURES if k in check)
    if "positions" in check:
        figures += f" (over {check['positions']} position{'s' if check['positions'] != 1 else ''})"
    return figures


def throughput_table(section: dict) -> str:
    """The "throughput" section as text: tokens/s per batch size, quantized vs baseline, and the checks."""
    s = section["settings"]
    env = section["environment"]
    head = (f"throughput on {section['device']} ({env['dtype']}, torch {env['torch']}"
            f"{', CUDA ' + env['cuda'] if env.get('cuda') else ''}{', driver ' + env['driver'] if env.get('driver') else ''}), "
            f"prompt {s['prompt_len']}, generate {s['gen_len']}, median of {s['repeats']} after {s['warmup']} warm-up, "
            f"{'compiled decode, ' if section.get('compiled_decode') else ''}{'CUDA graphs' if section.get('cuda_graphs') else 'eager'}; backend {section.get('backend', '?')}")
    rows = [("batch", "prefill tok/s", "base prefill", "ratio", "decode tok/s", "base decode", "ratio", "decode spread q/base")]
    for r in section["rows"]:
        spread = f"{r['quantized']['decode']['spread_pct']:.1f}%/{r['baseline']['decode']['spread_pct']:.1f}%"
        rows.append((str(r["batch"]), f"{r['prefill_tok_s']:,.1f}", f"{r['baseline_prefill_tok_s']:,.1f}",
                     f"{r['prefill_speedup']:.2f}x", f"{r['decode_tok_s']:,.1f}", f"{r['baseline_decode_tok_s']:,.1f}",
                     f"{r['decode_speedup']:.2f}x", spread))
    lines = [head] + _table(rows)
    for c in section.get("checks", []):
        verdict = "" if "passed" not in c else (" PASSED" if c["passed"] else " FAILED")
        lines.append(f"check: {c['name']}: {check_figures(c)}{verdict}")
    if section.get("note"):
        lines.append(f"NOTE: {section['note']}")
    return "\n".join(lines)


def result_text(result: dict) -> str:
    parts = []
    if "perplexity" in result:
        parts.append(perplexity_table(result["perplexity"]))
    if "throughput" in result:
        parts.append(throughput_table(result["throughput"]))
    return "\n\n".join(parts)
