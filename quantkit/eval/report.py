"""The eval's outputs: the JSON (the one source of truth), a Markdown report rendered from it, and a PNG plot of
tokens/s by batch size, quantized vs baseline. Every file is written atomically (temporary sibling, rename)."""

from __future__ import annotations

import logging
from pathlib import Path

from quantkit.atomic import atomic_file
from quantkit.eval import render
from quantkit.eval.attention import NAME as ATTENTION
from quantkit.manifest import write_json

log = logging.getLogger(__name__)

REPORT_MD = "quantkit_eval.md"
PLOT_PNG = "quantkit_eval.png"
ATTENTION_NOTE = ("SDPA attention, a decode step's grouped query heads reading each cached key/value head once "
                  "(quantkit.eval.attention); ")
SPLIT_KV_NOTE = ("SDPA attention for the prefill, a decode step's attention through quantkit's split-KV decoding "
                 "kernel, each sequence's cached keys and values cut among many programs "
                 "(quantkit.eval.decode_attention); ")
FUSED_NOTE = "q/k/v and gate/up projections run as one linear each in both models (quantkit.eval.fuse); "
COMPILED_NOTE = " (the decode step torch.compile'd first, quantized linears opaque to the compiler, the same for both models)"


def _f(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _perplexity_md(p: dict) -> list[str]:
    lines = ["## Perplexity", "",
             f"Text: {p['text']}; {p['windows']} non-overlapping windows of {p['ctx']} tokens; "
             f"{p.get('backend', '?')} backend on {p['device']} ({p['dtype']}).", "",
             "| model | perplexity | ± stderr | tokens |", "|---|---|---|---|"]
    if "baseline" in p:
        b = p["baseline"]
        lines.append(f"| baseline ({b.get('model') or '?'}) | {_f(b['ppl'], 4)} | {_f(b['stderr'], 4)} | {b['tokens']} |")
    q = p["quantized"]
    lines.append(f"| quantized | {_f(q['ppl'], 4)} | {_f(q['stderr'], 4)} | {q['tokens']} |")
    if p.get("kl_divergence") is not None:
        lines += ["", "Against the baseline on the same windows (what llama.cpp's perplexity tool reports):", "",
                  f"- perplexity ratio: {_f(p['ppl_ratio'], 4)}",
                  f"- KL divergence KL(baseline ‖ quantized): mean {_f(p['kl_divergence'], 6)} ± {_f(p['kl_divergence_stderr'], 6)}, "
                  f"p99 {_f(p['kl_divergence_p99'], 4)}, max {_f(p['kl_divergence_max'], 4)} nats",
                  f"- top-1 agreement: {_f(100 * p['top1_agreement'], 2)}% ± {_f(100 * p['top1_agreement_stderr'], 2)}%"]
    return lines


def projections_fused(section: dict) -> bool:
    """Both models of a throughput run (or a bench/profile_decode.py run) had every block's projections fused."""
    parts = section.get("fused_projections") or {}
    return len(parts) == 2 and all(p.get("qkv") and p["qkv"] == p.get("gate_up") for p in parts.values())


def _attention_note(t: dict) -> str:
    if t.get("attention") != ATTENTION:
        return ""
    return SPLIT_KV_NOTE if t.get("decode_attention") == "split" else ATTENTION_NOTE


def _throughput_md(t: dict, plot_name: str | None) -> list[str]:
    s, env = t["settings"], t["environment"]
    lines = ["## Throughput", ""]
    if t.get("note"):
        lines += [f"**{t['note']}**", ""]
    lines += [f"On {t['device']}: {env['dtype']} activations, torch {env['torch']}, CUDA {env.get('cuda') or '—'}, "
              f"driver {env.get('driver') or '—'}, transformers {env['transformers']}, quantkit {env['quantkit']}; "
              f"{t.get('backend', '?')} backend; baseline: {t.get('baseline', '?')}.", "",
              f"Prompt {s['prompt_len']} tokens, then {s['gen_len']} greedy decode steps, per sequence; static KV cache; "
              f"{_attention_note(t)}"
              f"{FUSED_NOTE if projections_fused(t) else ''}"
              f"{'prefill and decode step captured in CUDA graphs' if t.get('cuda_graphs') else 'eager (no CUDA graphs)'}"
              f"{COMPILED_NOTE if t.get('compiled_decode') else ''}; "
              f"median of {s['repeats']} repeats after {s['warmup']} warm-up, spread = (max − min) / median.", "",
              "| batch | prefill tok/s | baseline prefill tok/s | prefill ratio | decode tok/s | baseline decode tok/s | decode ratio | decode spread q / baseline |",
              "|---|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        lines.append(f"| {r['batch']} | {_f(r['prefill_tok_s'], 1)} | {_f(r['baseline_prefill_tok_s'], 1)} | "
                     f"{_f(r['prefill_speedup'])}x | {_f(r['decode_tok_s'], 1)} | {_f(r['baseline_decode_tok_s'], 1)} | "
                     f"{_f(r['decode_speedup'])}x | {_f(r['quantized']['decode']['spread_pct'], 1)}% / "
                     f"{_f(r['baseline']['decode']['spread_pct'], 1)}% |")
    if t.get("checks"):
        lines += ["", "Checks on the run's own inputs, before timing:", ""]
        for c in t["checks"]:
            figures = render.check_figures(c, label=lambda k: k.replace("_", " "))
            verdict = "" if "passed" not in c else (" — passed" if c["passed"] else " — **FAILED**")
            lines.append(f"- {c['name']}: {figures}{verdict}")
    if plot_name:
        lines += ["", f"![tokens/s by batch size]({plot_name})"]
    return lines


def render_markdown(result: dict, *, plot_name: str | None = None) -> str:
    """The Markdown report of an eval result."""
    model = result.get("model", {})
    if "random_weights" in model:
        rw = model["random_weights"]
        what = (f"random weights of `{rw['config']}` ({rw['model_type']}, {rw['parameters'] / 1e9:.2f} B parameters), "
                f"4-bit group {rw['group_size']} symmetric, {rw['method']}"
                + (", lm_head quantized too" if rw.get("lm_head_quantized") else ""))
    else:
        what = (f"`{model.get('directory', '?')}`: {model.get('bits')}-bit, group {model.get('group_size')}, "
                f"{'symmetric' if model.get('sym') else 'asymmetric'}")
    lines = ["# quantkit eval", "", f"Model: {what}.", ""]
    if result.get("weights_digest"):
        lines += [f"Weights digest (sha256 of the weight files): `{result['weights_digest']}`", ""]
    if result.get("command"):
        lines += ["Command:", "", "```", result["command"], "```", ""]
    if "perplexity" in result:
        lines += _perplexity_md(result["perplexity"]) + [""]
    if "throughput" in result:
        lines += _throughput_md(result["throughput"], plot_name) + [""]
    lines.append(f"Produced by quantkit {result.get('quantkit_version', '?')}; the JSON beside this report holds every figure.")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str | Path) -> None:
    """PNG: prefill and decode tokens/s by batch size, quantized vs baseline, with the ratios annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = result["throughput"]
    batches = [r["batch"] for r in t["rows"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, phase in zip(axes, ("decode", "prefill")):
        q = [r[f"{phase}_tok_s"] for r in t["rows"]]
        b = [r[f"baseline_{phase}_tok_s"] for r in t["rows"]]
        ax.plot(batches, q, "o-", label="W4A16 (quantized)")
        ax.plot(batches, b, "s--", label=f"baseline ({t['environment']['dtype']})")
        for x, yq, yb in zip(batches, q, b):
            ax.annotate(f"{yq / yb:.2f}x", (x, yq), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(batches, [str(x) for x in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{phase}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    title = t["device"] + (" — CPU: not meaningful" if not t.get("meaningful", True) else "")
    fig.suptitle(title)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_into(directory: str | Path, result: dict) -> list[Path]:
    """The standard report files inside a checkpoint directory (what `push` and the model card read)."""
    from quantkit.manifest import EVAL_JSON

    directory = Path(directory)
    return write(result, json_path=directory / EVAL_JSON, md_path=directory / REPORT_MD, png_path=directory / PLOT_PNG)


def write(result: dict, *, json_path: str | Path | None = None, md_path: str | Path | None = None,
          png_path: str | Path | None = None) -> list[Path]:
    """Write whichever outputs are asked for, each atomically; the plot only when throughput was measured."""
    written = []
    if json_path:
        write_json(json_path, result)
        written.append(Path(json_path))
    plotted = False
    if png_path and "throughput" in result:
        try:
            plot(result, png_path)
            plotted = True
            written.append(Path(png_path))
        except ImportError:
            log.warning("matplotlib is not installed: no plot written (pip install matplotlib)")
    elif png_path:
        log.info("no throughput measured: no plot written to %s", png_path)
    if md_path:
        plot_name = None
        if plotted:
            plot_name = Path(png_path).name if Path(png_path).parent.resolve() == Path(md_path).parent.resolve() else str(png_path)
        with atomic_file(md_path) as tmp:
            tmp.write_text(render_markdown(result, plot_name=plot_name), encoding="utf-8")
        written.append(Path(md_path))
    return written
