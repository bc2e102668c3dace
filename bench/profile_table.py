"""Markdown tables of bench/profile_decode.py results: a decode step's time by kind, quantized vs bf16 (the L2
prefetch launches of --l2-prefetch's "+launch" modes counted with the other kernels), and, for the runs that recorded
it, the kernel time of the step's linears by their role in a block (the launches of a linear's own prefetch with it).

    python bench/profile_table.py [KERNEL=]bench/results/decode_profile_h100_{sdpa,grouped,compiled}.json ... \
        > bench/results/decode_profile_h100.md
"""

from __future__ import annotations

import json
import re
import sys

from quantkit.eval.prefetch import describe
from quantkit.eval.report import projections_fused


def setup(run: dict, model: str, x_image: bool = False, prefetch: dict | None = None, pipelined: bool = False,
          combo: bool | None = None, glu: bool = False) -> str:
    """How the run's steps ran; model "quantized_pdl" (--pdl both) or a run with --pdl [on]: the streaming kernel as a
    programmatic launch; x_image (the row's): its compiled step made the warp-specialized kernel's image of x in the
    kernel that makes x; prefetch (the row's l2_prefetch, --l2-prefetch): the linears' L2 prefetch of the next;
    pipelined (the row's ws_pipelined_32, --ws-pipelined): the warp-specialized kernel's pipelined 32-token instance;
    combo (the row's combo_kernels, --combo; None: the run's): inductor's combo kernels; glu (the row's glu_epilogue,
    --glu-epilogue): the 4-bit gated pairs' SiLU and multiply in the kernel, down as its programmatic launch."""
    # runs before the JSON recorded it: the option on the command line, and the split kernels then named _partial and
    # _combine, which the kinds did not count as attention
    unnamed = "decode_attention" not in run and "--decode-attention split" in run["command"]
    attention = ("transformers SDPA (cache repeated per query head)" if run.get("attention") in (None, "sdpa")
                 else "split-KV decode attention" if run.get("decode_attention") == "split"
                 else "split-KV decode attention (its kernels counted as other)" if unnamed
                 else "grouped decode attention")
    pdl = model == "quantized_pdl" or re.search(r"--pdl(?! (off|both))", run["command"])
    return (attention + (", fused q/k/v and gate/up" if projections_fused(run) else "")
            + (", torch.compile" if "--compile" in run["command"] else ", eager ops")
            + (", inductor's combo kernels" if (run.get("combo_kernels") if combo is None else combo) else "")
            + (", programmatic launch" if pdl else "")
            + (", attention's programmatic launches into o_proj" if (run.get("split_kv_settings") or {}).get("PDL")
               else "")
            + (", programmatic launches through the step" if run.get("inductor_pdl") else "")
            + (", one cache position for every layer" if run.get("shared_cache_position") else "")
            + (", rotary embedding and cache write in the attention kernel" if run.get("rope_in_attention") else "")
            + (", gate/up's SiLU and multiply in its kernel, down as its programmatic launch" if glu else "")
            + (", the warp-specialized kernel's x packed by inductor" if x_image else "")
            + (", its 32-token instance pipelined" if pipelined else "")
            + (", " + describe(prefetch) if describe(prefetch) else ""))


def row_setup(run: dict, model: str, row: dict) -> str:
    """setup() of one of the run's rows (model's, at one batch), from what the row recorded."""
    return setup(run, model, row.get("x_image", False), row.get("l2_prefetch"), row.get("ws_pipelined_32", False),
                 row.get("combo_kernels"), row.get("glu_epilogue", False))


# Roles (profile_decode.linear_roles) of the fused projections (quantkit.eval.fuse), by what they compute.
ROLE_LABELS = {"self_attn.q_proj.shared.fused": "q/k/v", "mlp.gate_up": "gate/up"}


def role_label(role: str) -> str:
    return ROLE_LABELS.get(role, role.rsplit(".", 1)[-1])


def paired_rows(run: dict):
    """Each quantized row of the run as (model, batch, row, the baseline's row at its batch or None: a run cut short
    may lack it). A quantized variant pairs with the baseline of its own suffix where the run has one (--combo both:
    'quantized_combo_off' with 'baseline_combo_off'), else with 'baseline'."""
    rows = {(r["model"], r["batch"]): r for r in run["runs"]}
    for (model, batch), q in rows.items():
        if model.startswith("quantized"):
            own = ("baseline" + model[len("quantized"):], batch)
            yield model, batch, q, rows.get(own, rows.get(("baseline", batch)))


def by_linear_table(labels: list[str], runs: list[dict]) -> list[str]:
    """The rows with a by_linear breakdown in both models: each role's kernel us per step, W4A16 (bf16) and their
    ratio; no lines where no row has one."""
    lines, roles = [], None
    for label, run in zip(labels, runs):
        for model, batch, q, b in paired_rows(run):
            if not isinstance(q.get("by_linear"), dict) or not isinstance((b or {}).get("by_linear"), dict):
                continue
            if roles is None:
                roles = list(q["by_linear"])
                lines += ["", "Kernel time of the linears by role, summed over the blocks, us per step: W4A16 (bf16), "
                          "and the speed-up over bf16.", "",
                          "| kernels | setup | batch | " + " | ".join(role_label(r) for r in roles) + " |",
                          "|---|---|---|" + "---|" * len(roles)]
            cells = []
            for r in roles:
                qu, bu = q["by_linear"].get(r, {}).get("us"), b["by_linear"].get(r, {}).get("us")
                cells.append("-" if qu is None or bu is None
                             else f"{qu:,.0f} ({bu:,.0f}) {bu / qu:.2f}x" if qu else f"{qu:,.0f} ({bu:,.0f})")
            lines.append(f"| {label} | {row_setup(run, model, q)} | {batch} | "
                         + " | ".join(cells) + " |")
    return lines


def main(args: list[str]) -> None:
    """args: JSON paths, each optionally prefixed "KERNEL=" (which kernel build it measured, a column; the label may
    hold "=" itself: the path is what follows the last one)."""
    labels = [a.rpartition("=")[0] for a in args]
    runs = [json.load(open(a.rpartition("=")[2])) for a in args]
    env = runs[0]["environment"]
    lines = [f"{env['device']}, driver {env.get('driver')}, torch {env['torch']}, {env['dtype']}; Llama-3-8B shapes with "
             "random weights, group 128; one decode step after a 512-token prompt, replayed from its CUDA graph "
             "(median), and its kernels by kind (torch.profiler over steps run outside the graph, compiled where the "
             "step is). Commands: "
             + "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in runs)) + ".", "",
             "| kernels | setup | batch | step us: W4A16 (bf16) | decode ratio | GEMM kernels us: W4A16 (bf16) | "
             "attention us | other kernels us | launches |",
             "|---|---|---|---|---|---|---|---|---|"]
    cut_short = False
    for label, run in zip(labels, runs):
        for model, batch, q, b in paired_rows(run):
            other = q["by_kind"]["other"]["us"] + q["by_kind"].get("l2_prefetch", {"us": 0.0})["us"]
            # the bf16 model's step, the ratio and its GEMMs; dashes where the run ended before it
            step, ratio, gemm = ((f"{b['graph_step_us']:,.0f}", f"{b['graph_step_us'] / q['graph_step_us']:.2f}x",
                                  f"{b['by_kind']['gemm']['us']:,.0f}") if b else ("-", "-", "-"))
            cut_short |= b is None
            lines.append(f"| {label} | {row_setup(run, model, q)} | {batch} | "
                         f"{q['graph_step_us']:,.0f} ({step}) | {ratio} | "
                         f"{q['by_kind']['w4a16']['us'] + q['by_kind']['gemm']['us']:,.0f} ({gemm}) | "
                         f"{q['by_kind']['attention']['us']:,.0f} | {other:,.0f} | {q['kernels']} |")
    lines += ["", "GEMM kernels of the W4A16 model: its 224 W4A16 linears plus the bf16 lm_head (cuBLAS)."
              + (" A dash: the run ended before it measured the bf16 model at that batch." if cut_short else "")]
    lines += by_linear_table(labels, runs)
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
