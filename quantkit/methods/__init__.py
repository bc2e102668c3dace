"""Quantization methods. Each returns neutral QuantizedLinear objects; none of them packs.

A method is used through a *layer quantizer*: an object with

    quantize_layer(layer: LayerPlan, weights: dict[str, Tensor]) -> dict[str, QuantizedLinear]
    quantize_head(head: HeadPlan, weight: Tensor) -> QuantizedLinear   # lm_head, after the last block
    summary() -> dict            # what the method wants recorded in the manifest

``weights`` holds every tensor of the decoder block (by full name, as stored); the result maps each
quantized module name of ``layer.linears`` to its QuantizedLinear. Layers are visited in order, once each;
``quantize_head`` is called after them, only when the plan quantizes lm_head.
"""

from __future__ import annotations

from pathlib import Path

import torch

from quantkit.methods import rtn


def scale_dtype(recipe) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[recipe.dtype]


class RTNQuantizer:
    def __init__(self, recipe):
        self.recipe = recipe
        self.min_zero = 1 if recipe.checkpoint_format == "gptq" else 0

    def _quantize(self, weight, bias=None):
        return rtn.quantize(
            weight,
            bits=self.recipe.bits,
            group_size=self.recipe.group_size,
            sym=self.recipe.sym,
            scale_dtype=scale_dtype(self.recipe),
            bias=bias,
            min_zero=self.min_zero,
        )

    def quantize_layer(self, layer, weights):
        return {lin.name: self._quantize(weights[f"{lin.name}.weight"], weights.get(f"{lin.name}.bias"))
                for lin in layer.linears}

    def quantize_head(self, head, weight):
        return self._quantize(weight)

    def summary(self) -> dict:
        return {}


def make_quantizer(recipe, *, source, plan, state_dir: Path):
    """The layer quantizer for ``recipe.method``; ``state_dir`` is where a method may keep resumable state."""
    if recipe.method == "rtn":
        return RTNQuantizer(recipe)
    if recipe.method == "gptq":
        from quantkit.methods.gptq import GPTQQuantizer

        return GPTQQuantizer(recipe, source=source, plan=plan, state_dir=state_dir)
    raise ValueError(f"unknown method {recipe.method!r}")
