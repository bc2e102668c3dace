"""Time quantkit's GPTQ on a model with Llama-3-8B's shapes (random bf16 weights) on one GPU, layer by layer.

    python bench/gptq_8b_shapes.py --tokenizer DIR --out results.json [--work /tmp/gptq8b] [--layers N]

Writes a random checkpoint from bench/gptq_llama3_8b_config.json (one safetensors shard per decoder block, read
back lazily by convert), converts it with the given recipe switched to GPTQ (calibration: its default samples
and length from the shipped text, tokenized with --tokenizer, any tokenizer whose ids fit the vocabulary), and
records wall time, per-block times and peak GPU memory as JSON. Random weights make the timing honest (the work
does not depend on the values) and the perplexity meaningless.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "gptq_llama3_8b_config.json"

log = logging.getLogger("gptq-8b")


def write_random_checkpoint(directory: Path, config: dict, tokenizer: Path, *, layers: int | None, seed: int = 0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if layers is not None:
        config = {**config, "num_hidden_layers": layers}
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = h // heads
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(seed)

    def rnd(*shape, std=0.02):
        return (torch.randn(*shape, generator=g, device=dev) * std).to(torch.bfloat16).cpu()

    weight_map = {}

    def shard(name: str, tensors: dict) -> None:
        save_file(tensors, str(directory / name))
        weight_map.update({k: name for k in tensors})

    shard("embed.safetensors", {"model.embed_tokens.weight": rnd(vocab, h), "model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
                                "lm_head.weight": rnd(vocab, h)})
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shard(f"layer-{i:03d}.safetensors", {
            p + "self_attn.q_proj.weight": rnd(heads * head_dim, h),
            p + "self_attn.k_proj.weight": rnd(kv * head_dim, h),
            p + "self_attn.v_proj.weight": rnd(kv * head_dim, h),
            p + "self_attn.o_proj.weight": rnd(h, heads * head_dim),
            p + "mlp.gate_proj.weight": rnd(inter, h),
            p + "mlp.up_proj.weight": rnd(inter, h),
            p + "mlp.down_proj.weight": rnd(h, inter),
            p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
        })
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    for f in tokenizer.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copyfile(f, directory / f.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/gptq8b"))
    ap.add_argument("--layers", type=int, help="fewer decoder blocks (a quick look)")
    ap.add_argument("--recipe", default="rdna3-w4a16-g32")
    ap.add_argument("--config", type=Path, default=CONFIG, help="another config.json (a small one for a smoke test)")
    ap.add_argument("--calib-samples", type=int)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")

    from quantkit import recipes
    from quantkit.convert import convert

    config = json.loads(args.config.read_text())
    src = args.work / "src"
    t0 = time.perf_counter()
    write_random_checkpoint(src, config, args.tokenizer, layers=args.layers)
    gen_s = time.perf_counter() - t0
    log.info("random checkpoint written in %.1f s", gen_s)
    recipe = recipes.override(recipes.load(args.recipe), method="gptq", calib_samples=args.calib_samples)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    manifest = convert(str(src), args.work / "out", recipe, force=True, progress=False)
    wall = time.perf_counter() - t0
    summary = manifest["method_summary"]
    result = {
        "model": f"Llama-3-8B shapes, random bf16 weights ({config['num_hidden_layers'] if args.layers is None else args.layers} blocks)",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "recipe": recipe.to_dict(),
        "calibration": summary["calibration"],
        "convert_wall_s": round(wall, 1),
        "gptq_blocks_s": round(sum(manifest["timings"]["per_layer_s"]), 1),
        "per_block_s": manifest["timings"]["per_layer_s"],
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "peak_rss_mb": manifest["timings"]["peak_rss_mb"],
        "linears_gptq": summary["linears_gptq"],
        "linears_rtn_fallback": summary["linears_rtn_fallback"],
        "mean_output_error_gptq": summary["mean_output_error_gptq"],
        "mean_output_error_rtn": summary.get("mean_output_error_rtn"),
        "gptq_quantizer_s": summary.get("solve_seconds"),
        "random_checkpoint_write_s": round(gen_s, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("%s", {k: v for k, v in result.items() if k not in ("per_block_s", "recipe")})


if __name__ == "__main__":
    main()
