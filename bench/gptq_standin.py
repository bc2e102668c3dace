"""GPTQ on the SmolLM2 stand-in: baseline vs round-to-nearest vs quantkit GPTQ vs llm-compressor GPTQ, on the
same calibration windows and the same Persuasion windows. Every conversion runs as its own subprocess, timed by
wall clock, one after another on the same machine with the same thread count.

    python bench/gptq_standin.py                       # run what is missing, then write the tables
    python bench/gptq_standin.py --render               # only rewrite the table from JSON
    python bench/gptq_standin.py --variants gptq-g32,rtn-g32 --windows 8   # a quick look

Results accumulate in bench/results/gptq_standin.json (a variant already measured with the same settings is not
run again); the Markdown goes to bench/results/gptq_standin.md (bench/update_readme.py splices it into README).

llm-compressor runs in its own virtual environment (it pins other transformers versions), given by --llmc-python;
bench/gptq_llmcompressor_run.py is its worker. The stand-in's weights already carry Q4_1 rounding: its
dequantized model is the baseline here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "gptq_standin.json"
TABLE = ROOT / "bench" / "results" / "gptq_standin.md"
VARIANTS = ["baseline", "rtn-g32", "gptq-g32", "llmc-g32", "rtn-g64", "gptq-g64", "llmc-g64"]

log = logging.getLogger("gptq-standin")


def settings(args) -> dict:
    return {"windows": args.windows, "ctx": 1024, "samples": args.samples, "seq_len": args.seq_len,
            "threads": args.threads, "sym": True}


def convert_cmd(variant: str, src: Path, out: Path, args) -> list[str]:
    method, group = variant.split("-g")
    if method == "llmc":
        return [args.llmc_python, str(ROOT / "bench" / "gptq_llmcompressor_run.py"), str(src), str(out),
                "--group-size", group, "--samples", str(args.samples), "--seq-len", str(args.seq_len)]
    return [sys.executable, "-m", "quantkit", "convert", str(src), "--out", str(out), "--method", method,
            "--group-size", group, "--sym", "--calib-samples", str(args.samples), "--calib-seq-len", str(args.seq_len),
            "--force"]


def evaluate(directory: Path, variant: str, windows: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantkit import data, reference
    from quantkit.eval import ppl

    tokenizer = AutoTokenizer.from_pretrained(directory)
    _, text = data.read_text(None, default=data.EVAL_TEXT)
    wins = ppl.windows(ppl.tokenize(tokenizer, text), ctx=1024, max_windows=windows)
    if variant.startswith(("rtn", "gptq")):
        model = reference.load_model(directory, dtype=torch.float32, device="cpu")
    else:  # baseline and llm-compressor's fake-quantized output are plain checkpoints
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    return ppl.score(model, wins, desc=f"perplexity {variant}").to_dict()


def timed_convert(variant: str, src: Path, out: Path, args) -> dict:
    """Run one conversion as a subprocess; its wall time and the machine's load average around it."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    cmd = convert_cmd(variant, src, out, args)
    log.info("%s: %s", variant, " ".join(cmd))
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{variant}: conversion failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"quantize_s": round(wall, 1), "load_avg_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "at": time.strftime("%H:%M:%S")}


def run_variant(variant: str, src: Path, work: Path, args) -> dict:
    if variant == "baseline":
        return {"ppl": evaluate(src, variant, args.windows), "quantize_s": None}
    out = work / variant
    timing = timed_convert(variant, src, out, args)
    result = {"quantize_s": timing["quantize_s"], "runs": [timing]}
    if variant.startswith("llmc"):
        result["tool"] = json.loads((out / "llmc_result.json").read_text())["tool"]
    else:
        manifest = json.loads((out / "quantkit_manifest.json").read_text())
        summary = manifest.get("method_summary") or {}
        result["tool"] = f"quantkit {manifest['version']}"
        for key in ("mean_output_error_gptq", "mean_output_error_rtn", "linears_rtn_fallback"):
            if key in summary:
                result[key] = summary[key]
    torch.set_num_threads(args.threads)
    result["ppl"] = evaluate(out, variant, args.windows)
    return result


def render(results: dict) -> str:
    s = results["settings"]
    v = results["variants"]
    base = v.get("baseline", {}).get("ppl", {}).get("ppl")
    lines = [
        f"SmolLM2-135M-Instruct stand-in (its Q4_1 GGUF dequantized to fp32 is the baseline), 4-bit symmetric, "
        f"Persuasion perplexity over {s['windows']} windows of {s['ctx']} tokens (fp32, CPU). Calibration: "
        f"{s['samples']} windows of {s['seq_len']} tokens of the shipped Pride and Prejudice, the same for both GPTQs. "
        f"Conversion wall time on {results.get('machine', 'this machine')}, {s['threads']} thread(s), one run after another "
        "(the machine is shared, so times carry noise; 'RTN gap closed' is measured against quantkit's round-to-nearest, "
        "which searches each group's scale).",
        "",
        "| group | method | perplexity | RTN gap closed | quantize time (s) |",
        "|---|---|---|---|---|",
    ]
    if base is not None:
        lines.append(f"| - | baseline (fp32) | {base:.2f} | - | - |")
    for group in (32, 64):
        rtn = v.get(f"rtn-g{group}", {}).get("ppl", {}).get("ppl")
        for method, label in (("rtn", "round-to-nearest (quantkit)"), ("gptq", "GPTQ (quantkit)"),
                              ("llmc", "GPTQ (llm-compressor, GPTQModifier)")):
            r = v.get(f"{method}-g{group}")
            if not r:
                continue
            p = r["ppl"]["ppl"]
            closed = "-"
            if method != "rtn" and base is not None and rtn is not None and rtn > base:
                closed = f"{100 * (rtn - p) / (rtn - base):.0f}%"
            t = r.get("quantize_s")
            runs = [x["quantize_s"] for x in r.get("runs", [])]
            t = "-" if t is None else (f"{t} (median of {', '.join(map(str, runs))})" if len(runs) > 1 else f"{t}")
            lines.append(f"| {group} | {label} | {p:.2f} | {closed} | {t} |")
    lines += ["", f"Regenerate: `python bench/gptq_standin.py` (measures what is missing) or `--render`."]
    return "\n".join(lines) + "\n"


def write_tables(results: dict) -> None:
    table = render(results)
    TABLE.write_text(table)
    log.info("wrote %s", TABLE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/quantkit-gptq-bench"))
    ap.add_argument("--llmc-python", default="/tmp/lcvenv/bin/python")
    ap.add_argument("--render", action="store_true", help="only rewrite the tables from the JSON")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--retime", default="", help="variants to convert again for timing only (no evaluation); "
                    "their quantize time becomes the median of all runs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    if args.render:
        write_tables(results)
        return
    if results.get("settings") != settings(args):
        results = {"settings": settings(args), "variants": {}}
    results["machine"] = f"{platform.machine()} CPU, {os.cpu_count()} cores (shared)"
    torch.set_num_threads(args.threads)
    from quantkit import source as sources, standin

    src = sources.resolve(str(standin.gguf_path()))
    args.work.mkdir(parents=True, exist_ok=True)
    for variant in [x.strip() for x in args.variants.split(",") if x.strip()]:
        if variant in results["variants"]:
            continue
        results["variants"][variant] = run_variant(variant, src, args.work, args)
        args.results.write_text(json.dumps(results, indent=2) + "\n")
        log.info("%s: %s", variant, results["variants"][variant])
    for variant in [x.strip() for x in args.retime.split(",") if x.strip()]:
        entry = results["variants"][variant]
        entry.setdefault("runs", [{"quantize_s": entry["quantize_s"]}])
        entry["runs"].append(timed_convert(variant, src, args.work / f"{variant}-retime", args))
        times = sorted(r["quantize_s"] for r in entry["runs"])
        entry["quantize_s"] = times[len(times) // 2] if len(times) % 2 else round(sum(times[len(times) // 2 - 1 : len(times) // 2 + 1]) / 2, 1)
        args.results.write_text(json.dumps(results, indent=2) + "\n")
        log.info("%s: runs %s", variant, entry["runs"])
    write_tables(results)


if __name__ == "__main__":
    main()
