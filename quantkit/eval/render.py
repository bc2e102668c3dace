"""Plain renderings of eval results (terminal / Markdown tables)."""

from __future__ import annotations


def perplexity_table(result: dict) -> str:
    rows = [("model", "perplexity", "± stderr")]
    if "baseline" in result:
        rows.append(("baseline", f"{result['baseline']['ppl']:.3f}", f"{result['baseline']['stderr']:.3f}"))
    rows.append(("quantized", f"{result['quantized']['ppl']:.3f}", f"{result['quantized']['stderr']:.3f}"))
    head = f"{result['text']}: {result['windows']} windows of {result['ctx']} tokens on {result['device']}"
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [head] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
