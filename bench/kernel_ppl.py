"""Perplexity through the W4A16 kernel vs through the pure-torch reference, on a quantized SmolLM2 stand-in.

    python3 bench/kernel_ppl.py make  --gguf SmolLM2-135M-Instruct.Q4_1.gguf --text persuasion.txt --out .standin
    python3 bench/kernel_ppl.py check --standin .standin --out bench/results/kernel_ppl_h100.json   # on the GPU

The stand-in (small enough to travel to the GPU machine, under 64 MiB): SmolLM2-135M-Instruct dequantized from
its GGUF (the baseline, as /work/shared/data/README.md says), all 30 decoder layers, the final norm, and the tied
embedding restricted to the 3745 tokens of the evaluation windows (the softmax runs over that vocabulary, so the
figure is not comparable to full-vocabulary perplexities). Every linear is quantized round-to-nearest, 4-bit,
group 64 (K = 576 takes no 128), symmetric (quantkit.methods.rtn) and stored as GPTQ v1 tensors
(quantkit.formats.gptq). Both runs use the same model and windows; only the linear
backend differs. Criterion: |ppl_kernel - ppl_reference| / ppl_reference < 0.1%.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import torch

log = logging.getLogger("kernel_ppl")
LAYERS, WINDOW, WINDOWS, GROUP = 30, 1024, 24, 64
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def make(gguf: Path, text: Path, out: Path) -> None:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantkit.formats import gptq
    from quantkit.methods import rtn

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
    ids = torch.tensor(tok(text.read_text())["input_ids"][: WINDOW * WINDOWS])
    vocab = torch.unique(ids)
    remap = torch.full((model.config.vocab_size,), -1, dtype=torch.long)
    remap[vocab] = torch.arange(len(vocab))
    sd = model.state_dict()
    tensors = {"input_ids": remap[ids].to(torch.int32), "embed": sd["model.embed_tokens.weight"][vocab].to(torch.bfloat16),
               "norm": sd["model.norm.weight"].to(torch.bfloat16)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            tensors[p + name] = sd[p + name].to(torch.bfloat16)
        for lin in LINEARS:
            ql = rtn.quantize(sd[p + lin + ".weight"], bits=4, group_size=GROUP, sym=True, scale_dtype=torch.bfloat16)
            for key, t in gptq.pack(ql, checkpoint_format="gptq").items():
                tensors[f"{p}{lin}.{key}"] = t
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "standin.safetensors"))
    cfg = model.config.to_dict()
    cfg.update(num_hidden_layers=LAYERS, vocab_size=len(vocab), tie_word_embeddings=True)
    (out / "config.json").write_text(json.dumps(cfg))
    log.info("stand-in: %d layers, vocabulary %d, %d tokens -> %s", LAYERS, len(vocab), len(ids), out)


def perplexity(model, ids: torch.Tensor) -> float:
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in range(len(ids) // WINDOW):
            chunk = ids[w * WINDOW : (w + 1) * WINDOW].long().unsqueeze(0).cuda()
            logits = model(chunk).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum")
            nll, count = nll + float(loss), count + WINDOW - 1
    return math.exp(nll / count)


def check(standin: Path, out: Path) -> int:
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantkit.kernels import W4A16Linear, kernel_available, prepare_from_checkpoint, self_check

    ok, reason = kernel_available()
    if not ok:
        log.error("no kernel: %s", reason)
        return 2
    self_check("cuda", force=True)
    t = load_file(str(standin / "standin.safetensors"))
    cfg = LlamaConfig(**json.loads((standin / "config.json").read_text()))
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.model.embed_tokens.weight.data.copy_(t["embed"])
    model.model.norm.weight.data.copy_(t["norm"])
    model.tie_weights()
    for i, layer in enumerate(model.model.layers):
        p = f"model.layers.{i}."
        layer.input_layernorm.weight.data.copy_(t[p + "input_layernorm.weight"])
        layer.post_attention_layernorm.weight.data.copy_(t[p + "post_attention_layernorm.weight"])
    model = model.cuda().eval()
    modules = []
    for i, layer in enumerate(model.model.layers):
        for lin in LINEARS:
            q = f"model.layers.{i}.{lin}."
            packed = prepare_from_checkpoint(t[q + "qweight"], t[q + "qzeros"], t[q + "scales"], t[q + "g_idx"], bits=4,
                                             group_size=GROUP, sym=True, checkpoint_format="gptq", device="cuda")
            parent, attr = layer.get_submodule(lin.split(".")[0]), lin.split(".")[1]
            module = W4A16Linear(packed)
            setattr(parent, attr, module)
            modules.append(module)
    result = {"device": torch.cuda.get_device_name(), "layers": LAYERS, "window": WINDOW,
              "windows": len(t["input_ids"]) // WINDOW, "group_size": GROUP, "sym": True, "dtype": "bfloat16",
              "command": "python3 bench/kernel_ppl.py check --standin .standin --out " + str(out)}
    for backend in ("kernel", "reference"):
        for m in modules:
            m.backend = backend
        result[f"ppl_{backend}"] = perplexity(model, t["input_ids"])
        log.info("%s: perplexity %.4f", backend, result[f"ppl_{backend}"])
    rel = abs(result["ppl_kernel"] - result["ppl_reference"]) / result["ppl_reference"]
    result["relative_difference"] = rel
    result["pass"] = rel < 1e-3
    out.write_text(json.dumps(result, indent=1))
    log.info("relative difference %.2e (%s 0.1%%)", rel, "within" if result["pass"] else "NOT within")
    return 0 if result["pass"] else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make")
    mk.add_argument("--gguf", type=Path, required=True)
    mk.add_argument("--text", type=Path, required=True)
    mk.add_argument("--out", type=Path, required=True)
    ck = sub.add_parser("check")
    ck.add_argument("--standin", type=Path, required=True)
    ck.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.cmd == "make":
        make(args.gguf, args.text, args.out)
        return 0
    return check(args.standin, args.out)


if __name__ == "__main__":
    sys.exit(main())
