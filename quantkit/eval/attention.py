"""The attention the throughput runs use: transformers' SDPA, with grouped-query decode steps done per KV head.

A decode step with a static cache passes an explicit mask, and transformers' SDPA path then repeats every
key/value head for each query head of its group before calling SDPA (transformers 5.17, the H100's; later versions
avoid it in eager mode, but not under torch.compile): on Llama-3-8B shapes (8 KV heads for 32 query heads) that
writes four copies of the whole cache per layer and step, which measured (bench/results/decode_profile_h100.md)
more time than the weights' own GEMMs at batch 8 and above. Here a single-token query is viewed as [batch, kv_heads, group, head_dim] instead, so SDPA reads each cached
key and value once; everything else (prefill, models without GQA) is transformers' SDPA unchanged. Both models of
a throughput run use it, so their comparison is unaffected.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from quantkit.eval import decode_attention

NAME = "quantkit_grouped_sdpa"
# What a decode step's attention runs on a GPU: "sdpa" (SDPA on the grouped query) or "split"
# (quantkit.eval.decode_attention, the cache cut among many programs; where it does not take the shapes, SDPA). Set
# for the duration of grouped_decode_attention (the throughput runs: Settings.decode_attention).
DECODE_KERNELS = ("split", "sdpa")
DECODE_KERNEL = "sdpa"


def grouped_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature: query [B, H, Q, D], key/value [B, H_kv, S, D] -> ([B, Q, H, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if query.shape[2] != 1 or groups == 1 or dropout or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if DECODE_KERNEL == "split" and query.is_cuda and decode_attention.supports(query, key, attention_mask):
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        out = decode_attention.split_kv_decode(query, key, value, attention_mask, scale)
        return out.transpose(1, 2).contiguous(), None
    b, h, _, d = query.shape
    q = query.reshape(b, h // groups, groups, d)  # head i = kv head i // groups, as transformers' repeat_kv orders them
    mask = attention_mask
    if mask is not None:
        mask = mask[..., : key.shape[-2]]
        if mask.shape[1] != 1:  # one mask row per query head: regroup it the same way
            mask = mask.reshape(b, h // groups, groups, mask.shape[-1])
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(b, h, 1, d).transpose(1, 2).contiguous(), None


def decode_kernel_of(model: nn.Module) -> str:
    """What the model's decode steps' attention runs now (inside grouped_decode_attention): "split" where DECODE_KERNEL
    asks for it, the model runs grouped_sdpa and the split kernel takes its shapes on its device and dtype
    (decode_attention.runs_for), else "sdpa"."""
    param = next(p for p in model.parameters() if p.is_floating_point())
    split = (DECODE_KERNEL == "split" and getattr(model.config, "_attn_implementation", None) == NAME
             and decode_attention.runs_for(model.config, param.device, param.dtype))
    return "split" if split else "sdpa"


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, grouped_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # masks are built as for SDPA


@contextmanager
def grouped_decode_attention(*models: nn.Module, decode_kernel: str = "sdpa"):
    """Within the block, the models that use transformers' "sdpa" attention use grouped_sdpa, whose decode steps run
    decode_kernel (DECODE_KERNEL); restored after."""
    global DECODE_KERNEL
    if decode_kernel not in DECODE_KERNELS:
        raise ValueError(f"decode_kernel must be one of {DECODE_KERNELS}, got {decode_kernel!r}")
    _register()
    changed, kernel_before, DECODE_KERNEL = [], DECODE_KERNEL, decode_kernel
    for model in models:
        config = model.config
        if getattr(config, "_attn_implementation", None) == "sdpa":
            model.set_attn_implementation(NAME)
            changed.append(model)
    try:
        yield
    finally:
        DECODE_KERNEL = kernel_before
        for model in changed:
            model.set_attn_implementation("sdpa")
