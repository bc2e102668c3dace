"""README table: the SmolLM2-135M stand-in, baseline vs RTN variants, perplexity on persuasion.txt, file
sizes, convert time and peak memory. Each conversion runs in its own process so its peak RSS is its own.

    python bench/standin_table.py [--max-windows 40] [--out bench/results/standin_rtn]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from quantkit import reference, source, standin
from quantkit.eval import ppl, validate
from quantkit.manifest import read_json

VARIANTS = [
    ("RTN g32 sym", ["--recipe", "rdna3-w4a16-g32"]),
    ("RTN g32 asym", ["--recipe", "w4a16-g32-asym"]),
    ("RTN g64 sym", ["--recipe", "w4a16-g64"]),
]  # group 128 does not divide the stand-in's K = 576


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-windows", type=int, default=40)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--out", default="bench/results/standin_rtn")
    parser.add_argument("--variants", default=None, help="comma-separated subset of variant labels")
    args = parser.parse_args()

    gguf = standin.gguf_path()
    base_dir = source.resolve(str(gguf))
    base = validate.load_baseline(str(base_dir), dtype=torch.float32, device="cpu")
    label, wins = validate.text_windows(base_dir, None, ctx=args.ctx, max_windows=args.max_windows)
    scores = ppl.score(base, wins, desc="perplexity (baseline)")
    del base
    rows = [{"model": "baseline (stand-in, dequantized Q4_1, fp32)", "ppl": round(scores.ppl, 4),
             "stderr": round(scores.stderr, 4), "size_bytes": dir_size(base_dir)}]
    sys.stderr.write(json.dumps(rows[-1]) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in VARIANTS:
            if args.variants and name not in args.variants.split(","):
                continue
            out = Path(tmp) / name.replace(" ", "_")
            subprocess.run([sys.executable, "-m", "quantkit", "convert", str(base_dir), "--out", str(out), *options],
                           check=True)
            manifest = read_json(out / "quantkit_manifest.json")
            model = reference.load_model(out, dtype=torch.float32, device="cpu")
            scores = ppl.score(model, wins, desc=f"perplexity ({name})")
            rows.append({"model": name, "ppl": round(scores.ppl, 4), "stderr": round(scores.stderr, 4),
                         "size_bytes": dir_size(out), "convert_s": manifest["timings"]["total_s"],
                         "peak_rss_mb": manifest["timings"]["peak_rss_mb"], "recipe": manifest["recipe"]["name"]})
            sys.stderr.write(json.dumps(rows[-1]) + "\n")  # each row as soon as it is known
    results = {
        "command": "python bench/standin_table.py " + " ".join(sys.argv[1:]),
        "model": f"SmolLM2-135M-Instruct ({gguf.name}, dequantized to fp32 = the baseline)",
        "text": label, "ctx": args.ctx, "windows": int(wins.shape[0]),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(results, indent=2) + "\n")
    Path(args.out + ".md").write_text(render(results))
    sys.stdout.write(render(results))


def render(results: dict) -> str:
    lines = [f"Perplexity on {results['text']} ({results['windows']} windows of {results['ctx']} tokens), "
             f"{results['model']}; `{results['command']}`", "",
             "| model | perplexity | size (MB) | convert (s) | peak RSS (MB) |", "|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['model']} | {r['ppl']:.2f} ± {r['stderr']:.2f} | {r['size_bytes'] / 1e6:.0f} | "
                     f"{r.get('convert_s', '')} | {r.get('peak_rss_mb', '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
