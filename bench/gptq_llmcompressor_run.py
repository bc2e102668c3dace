"""Worker for bench/gptq_standin.py: llm-compressor's GPTQ (GPTQModifier, W4A16 symmetric int4 with a group size)
on a checkpoint, calibrated on exactly quantkit's calibration windows; writes the fake-quantized (dequantized)
model as a plain checkpoint so that the same perplexity code evaluates it.

Run it with the interpreter that has llmcompressor installed (a separate venv), e.g.
    /tmp/lcvenv/bin/python bench/gptq_llmcompressor_run.py SRC_DIR OUT_DIR --group-size 32 --samples 32 --seq-len 512
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import torch

log = logging.getLogger("llmc-run")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calib", default=None, help="quantkit calibration source (default: the shipped text)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")

    import llmcompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantkit import calibration

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.src)
    cal = calibration.build(tokenizer, args.calib, samples=args.samples, seq_len=args.seq_len)
    ids = cal.tokens.tolist()
    dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]})
    model = AutoModelForCausalLM.from_pretrained(args.src, dtype=torch.float32)
    scheme = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=args.group_size),
    )
    recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"], block_size=128,
                          dampening_frac=0.01, actorder="static")
    t0 = time.perf_counter()
    oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=args.samples,
            max_seq_length=args.seq_len, shuffle_calibration_samples=False, pipeline="sequential")
    quantize_s = time.perf_counter() - t0

    state = {}
    quantized = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and hasattr(module, "weight_scale"):
            w = fake_quantize(module.weight.data, module.weight_scale.data, module.weight_zero_point.data,
                              module.quantization_scheme.weights)
            state[f"{name}.weight"] = w.float().contiguous()
            quantized += 1
    for name, tensor in model.state_dict().items():
        if name.endswith((".weight", ".bias")) and name not in state and "weight_" not in name.rsplit(".", 1)[-1]:
            if not (model.config.tie_word_embeddings and name == "lm_head.weight"):
                state[name] = tensor.float().contiguous()
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out / "model.safetensors"))
    config = json.loads((args.src / "config.json").read_text())
    config.pop("quantization_config", None)
    (args.out / "config.json").write_text(json.dumps(config, indent=2))
    for f in args.src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "generation_config", "chat_template")):
            shutil.copyfile(f, args.out / f.name)
    result = {"tool": f"llmcompressor {llmcompressor.__version__}", "quantized_linears": quantized,
              "quantize_s": round(quantize_s, 2), "total_s": round(time.perf_counter() - started, 2),
              "calibration": cal.to_dict(), "threads": torch.get_num_threads()}
    (args.out / "llmc_result.json").write_text(json.dumps(result, indent=2))
    log.info("done: %s", result)


if __name__ == "__main__":
    main()
