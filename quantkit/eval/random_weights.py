"""A quantized model of a real architecture's shapes with random weights, built directly on the device: speed
runs where the real weights are not at hand (offline machines).

What the weights are: transformers' own initialisation of the model from CONFIG (normal, std =
initializer_range, drawn from a fixed seed on the device), then every linear of the decoder blocks quantized by
quantkit.methods.rtn (round-to-nearest with its per-group scale search; 4-bit, symmetric, the given group size,
scales in the model dtype): the same code path as `quantkit convert --method rtn`, on random weights rather
than random codes. The baseline is the same model in bf16 with those linears replaced by their *dequantized*
weights, so both models compute the same function up to rounding and the run can check the kernels on it.
Embeddings, norms and lm_head stay in bf16 in both, as a converted checkpoint keeps them; with
``quantize_lm_head`` lm_head is quantized too (and untied from the embedding), as `convert --quantize-lm-head` does.

CONFIG is a plain Hugging Face config.json, a path or a name under recipes/configs/ (llama-3-8b, qwen3-8b, ...).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from quantkit.errors import InputError
from quantkit.methods import rtn
from quantkit.recipes import RECIPE_DIR

log = logging.getLogger(__name__)

CONFIG_DIR = RECIPE_DIR / "configs"


def config_path(name: str | Path) -> Path:
    """A config.json path from a path or a shipped name (recipes/configs/NAME.json)."""
    path = Path(name)
    if path.is_file():
        return path
    if path.is_dir() and (path / "config.json").is_file():
        return path / "config.json"
    shipped = CONFIG_DIR / f"{name}.json"
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json"))) or "none"
    raise InputError(f"{name}: no such config file; give a config.json path or one of: {known}")


def load_config(name: str | Path, *, dtype: torch.dtype):
    from transformers import AutoConfig

    path = config_path(name)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable config.json ({e})") from e
    data.pop("quantization_config", None)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise InputError(f"{path}: no model_type; is this a Hugging Face config.json?")
    try:
        config = AutoConfig.for_model(model_type, **data)
    except ValueError as e:
        raise InputError(f"{path}: transformers cannot build a {model_type!r} config ({e})") from e
    config.dtype = dtype
    return config, path


def _decoder_linears(model: nn.Module) -> list[str]:
    """Names of the nn.Linear modules inside the decoder blocks (what convert quantizes; lm_head stays)."""
    blocks = model.get_decoder().layers if hasattr(model, "get_decoder") else model.model.layers
    prefix = next(n for n, m in model.named_modules() if m is blocks)
    return [f"{prefix}.{n}" for n, m in blocks.named_modules() if isinstance(m, nn.Linear)]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


@torch.inference_mode()
def build(config_name: str | Path, *, group_size: int, dtype: torch.dtype, device: str, module_factory,
          seed: int = 0, progress: bool = True, quantize_lm_head: bool = False):
    """(quantized model, bf16 baseline of the same dequantized weights, info dict) on ``device``.

    module_factory(QuantizedLinear) makes each quantized module (quantkit.eval.backends: kernel or reference)."""
    from transformers import AutoModelForCausalLM

    config, path = load_config(config_name, dtype=dtype)
    if quantize_lm_head:
        config.tie_word_embeddings = False  # the 4-bit head is its own tensor, the embedding stays as it is
    torch.manual_seed(seed)
    with torch.device(device):
        baseline = AutoModelForCausalLM.from_config(config, dtype=dtype)
        quantized = AutoModelForCausalLM.from_config(config, dtype=dtype)
    names = _decoder_linears(baseline)
    if not names:
        raise InputError(f"{path}: the {config.model_type} model has no nn.Linear in its decoder blocks to quantize")
    if quantize_lm_head:
        if not isinstance(getattr(baseline, "lm_head", None), nn.Linear):
            raise InputError(f"{path}: the {config.model_type} model has no nn.Linear lm_head to quantize")
        names.append("lm_head")
    for name in tqdm(names, desc="random weights: quantizing", unit="linear", disable=not progress):
        lin = baseline.get_submodule(name)
        ql = rtn.quantize(lin.weight, bits=4, group_size=group_size, sym=True, scale_dtype=dtype,
                          bias=None if lin.bias is None else lin.bias.detach(), min_zero=1)
        ql = type(ql)(**{**ql.__dict__, "g_idx": ql.g_idx.to(lin.weight.device)})
        lin.weight.copy_(ql.dequantize(dtype))
        _set(quantized, name, module_factory(ql))
    quantized_names = set(names)
    shared = {k: v for k, v in baseline.state_dict().items() if k.rpartition(".")[0] not in quantized_names}
    missing, unexpected = quantized.load_state_dict(shared, strict=False)
    if unexpected:
        raise InputError(f"{path}: the quantized model does not take {unexpected[:3]}")
    if device != "cpu":
        torch.cuda.empty_cache()
    info = {"config": path.name, "model_type": config.model_type, "group_size": group_size, "bits": 4, "sym": True,
            "method": "rtn (quantkit.methods.rtn) on transformers' random initialisation", "seed": seed,
            "quantized_linears": len(names), "lm_head_quantized": quantize_lm_head,
            "parameters": sum(p.numel() for p in baseline.parameters())}
    return quantized.eval(), baseline.eval(), info
