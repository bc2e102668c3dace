"""Peak memory of `quantkit convert` on a model of a real architecture's shapes (random weights), to show that
conversion holds about one decoder layer plus the embeddings, never the whole model.

    python bench/convert_peak_memory.py [--config recipes/configs/llama-3.2-1b.json] [--out bench/results/convert_memory]

The random checkpoint is written shard by shard (one layer at a time) by this script; `quantkit convert` then
runs in its own process, and its peak RSS is read from the manifest (that process's VmHWM).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file


def layer_tensors(cfg: dict, i: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
              "self_attn.o_proj": (h, q), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
              "mlp.down_proj": (h, inter)}
    p = f"model.layers.{i}"
    out = {f"{p}.{n}.weight": (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for n, s in shapes.items()}
    out[f"{p}.input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    out[f"{p}.post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    return out


def write_random_checkpoint(cfg: dict, directory: Path, tokenizer_from: Path) -> int:
    gen = torch.Generator().manual_seed(0)
    weight_map, params = {}, 0
    shards = [("embed", {"model.embed_tokens.weight": (torch.randn(cfg["vocab_size"], cfg["hidden_size"], generator=gen)
                                                       * 0.02).to(torch.bfloat16),
                         "model.norm.weight": torch.ones(cfg["hidden_size"], dtype=torch.bfloat16)})]
    count = cfg["num_hidden_layers"] + 1
    for idx in range(count):
        name, tensors = shards.pop() if idx == 0 else (f"layer{idx - 1}", layer_tensors(cfg, idx - 1, gen))
        fname = f"model-{idx + 1:05d}-of-{count:05d}.safetensors"
        save_file(tensors, str(directory / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in tensors})
        params += sum(t.numel() for t in tensors.values())
        del tensors
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_from / f, directory / f)
    return params


def main() -> None:
    from quantkit import source, standin

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="recipes/configs/llama-3.2-1b.json")
    parser.add_argument("--recipe", default="rdna3-w4a16-g32")
    parser.add_argument("--out", default="bench/results/convert_memory")
    args = parser.parse_args()
    cfg = json.loads(Path(args.config).read_text())
    standin_dir = source.resolve(str(standin.gguf_path()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "random"
        big.mkdir()
        params = write_random_checkpoint(cfg, big, standin_dir)
        for label, src, n in [("SmolLM2-135M stand-in", standin_dir, None), (f"random {Path(args.config).stem}", big, params)]:
            out = Path(tmp) / "out"
            subprocess.run([sys.executable, "-m", "quantkit", "convert", str(src), "--out", str(out),
                            "--recipe", args.recipe, "--force"], check=True)
            manifest = json.loads((out / "quantkit_manifest.json").read_text())
            src_bytes = sum(p.stat().st_size for p in Path(src).glob("*.safetensors"))
            rows.append({"model": label, "params": n, "source_bytes": src_bytes,
                         "peak_rss_mb": manifest["timings"]["peak_rss_mb"], "convert_s": manifest["timings"]["total_s"],
                         "largest_layer_s": max(manifest["timings"]["per_layer_s"])})
            shutil.rmtree(out)
    results = {"command": "python bench/convert_peak_memory.py " + " ".join(sys.argv[1:]), "recipe": args.recipe,
               "rows": rows}
    Path(args.out + ".json").write_text(json.dumps(results, indent=2) + "\n")
    md = ["| model | checkpoint size (MB) | convert peak RSS (MB) | convert time (s) |", "|---|---|---|---|"]
    md += [f"| {r['model']} | {r['source_bytes'] / 1e6:.0f} | {r['peak_rss_mb']:.0f} | {r['convert_s']:.0f} |" for r in rows]
    Path(args.out + ".md").write_text(f"`{results['command']}` (recipe {args.recipe})\n\n" + "\n".join(md) + "\n")
    sys.stdout.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
