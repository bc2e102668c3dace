"""The attention the throughput runs use: transformers' SDPA, with grouped-query decode steps done per KV head.

A decode step with a static cache passes an explicit mask, and transformers' SDPA path then repeats every
key/value head for each query head of its group before calling SDPA (transformers 5.17, the H100's; later versions
avoid it in eager mode, but not under torch.compile): on Llama-3-8B shapes (8 KV heads for 32 query heads) that
writes four copies of the whole cache per layer and step, which measured (bench/results/decode_profile_h100.md)
more time than the weights' own GEMMs at batch 8 and above. Here a single-token query is viewed as [batch, kv_heads, group, head_dim] instead, so SDPA reads each cached
key and value once; everything else (prefill, models without GQA) is transformers' SDPA unchanged. Both models of
a throughput run use it, so their comparison is unaffected. With ROPE_IN_ATTENTION, a Llama-type attention block's
decode steps hand q, k and v to the split kernel before the rotary embedding, which it applies and writes the cache
in the same launch. A block whose fused q/k/v is a 4-bit layer in rope order (quantkit.eval.fuse.ROPE_IN_QKV) has
its decode steps' rotary embedding and cache write done in that layer's kernel (rope_qkv), then the split kernel.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from quantkit.eval import decode_attention, device_state

NAME = "quantkit_grouped_sdpa"
# What a decode step's attention runs on a GPU: "sdpa" (SDPA on the grouped query) or "split"
# (quantkit.eval.decode_attention, the cache cut among many programs; where it does not take the shapes, SDPA). Set
# for the duration of grouped_decode_attention (the throughput runs: Settings.decode_attention).
DECODE_KERNELS = ("split", "sdpa")
DECODE_KERNEL = "sdpa"
# With the "split" kernel: a decode step's rotary embedding of q and k and its cache write done in the split kernel's
# launch (decode_attention.rope_split_kv_decode) instead of in inductor's kernel before it, one launch a layer fewer in
# both models (docs/kernel.md item 67), where the attention is Llama's (ROPE_MODEL_TYPES: projections, rotary
# embedding, cache, attention, o_proj; no q/k norm) and its cache layer writes at a position tensor
# (quantkit.eval.throughput.share_cache_position). Read when grouped_decode_attention is entered; off unless
# QUANTKIT_ROPE_IN_ATTENTION=1: slower on an H100 (the split kernel took 50 us a step more, as much as the kernel it
# removes, and the step 19 us longer; docs/kernel.md item 67).
ROPE_IN_ATTENTION = os.environ.get("QUANTKIT_ROPE_IN_ATTENTION", "0") == "1"
ROPE_MODEL_TYPES = ("llama", "mistral", "qwen2")


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


def _rope_decode(module: nn.Module, hidden_states: torch.Tensor, kwargs: dict) -> torch.Tensor | None:
    """The attention block's output for a one-token step through its q/k/v's rope_qkv and split_kv_decode (a layer in
    rope order whose kernel runs the epilogue at the step's rows), else through rope_split_kv_decode (with
    ROPE_IN_ATTENTION), or None where neither applies (then transformers' forward runs): not a one-token step, not the
    split kernel, no cache layer that writes at a position tensor (nor one initialized by a prefill), shapes the
    kernel does not take."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))  # the name since transformers 5.2x, and before
    embeddings, mask = kwargs.get("position_embeddings"), kwargs.get("attention_mask")
    layers = getattr(cache, "layers", None)
    layer = layers[module.layer_idx] if layers is not None and module.layer_idx < len(layers) else None
    position = getattr(layer, "position", None)
    if (hidden_states.dim() != 3 or hidden_states.shape[1] != 1 or DECODE_KERNEL != "split" or embeddings is None
            or position is None or not layer.is_initialized or not device_state.runs_on(hidden_states.device)):
        return None
    (heads, kv_heads), d = decode_attention.head_counts(module.config), module.head_dim
    if kv_heads == heads or not decode_attention.supports_heads(heads, kv_heads, d, hidden_states.dtype, mask,
                                                                 layer.keys.shape[-2]):
        return None
    b = hidden_states.shape[0]
    cos, sin = embeddings
    fused = _rope_linear(module)
    if fused is not None and not fused.rope_in_kernel_at(b):  # (more rows: transformers' rotary, or the split kernel's)
        fused = None
        if not ROPE_IN_ATTENTION:
            return None
    if fused is not None:  # the rotary embedding and cache write in the 4-bit q/k/v kernel, then the split kernel
        q = fused.rope_qkv(hidden_states, cos, sin, layer.keys, layer.values, position)
        out = decode_attention.split_kv_decode(q.view(b, 1, -1, d).transpose(1, 2), layer.keys, layer.values, mask,
                                               module.scaling)
    else:
        q, k, v = (proj(hidden_states).view(b, 1, -1, d).transpose(1, 2)
                   for proj in (module.q_proj, module.k_proj, module.v_proj))
        out = decode_attention.rope_split_kv_decode(q, k, v, cos, sin, layer.keys, layer.values, position, mask,
                                                    module.scaling)
    return module.o_proj(out.transpose(1, 2).reshape(b, 1, -1))


def _rope_linear(module: nn.Module) -> nn.Module | None:
    """The attention block's fused q/k/v where it is a layer in rope order that runs rope_qkv (W4A16Linear.concat_rope,
    or the compiled step's opaque op of one), and no layer fold has primed it with its input; else None."""
    shared = getattr(module.q_proj, "shared", None)
    fused = getattr(shared, "fused", None)
    if getattr(fused, "rope", None) is None or not hasattr(fused, "rope_qkv") or getattr(shared, "_primed", False):
        return None
    return fused


def _rope_forward(module: nn.Module):
    """module's forward with its one-token steps through _rope_decode (transformers' attention modules return the
    output and the attention weights, None here)."""
    original = module.forward

    def forward(hidden_states: torch.Tensor, *args, **kwargs):
        out = None if args else _rope_decode(module, hidden_states, kwargs)
        return original(hidden_states, *args, **kwargs) if out is None else (out, None)

    return forward


def _rope_modules(model: nn.Module) -> list[nn.Module]:
    """model's attention blocks that _rope_decode can run (where the model type allows): those whose q/k/v runs
    rope_qkv, and with ROPE_IN_ATTENTION every one."""
    if getattr(model.config, "model_type", None) not in ROPE_MODEL_TYPES:
        return []
    return [m for m in model.modules()
            if all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "layer_idx", "head_dim", "scaling"))
            and not hasattr(m, "q_norm") and (ROPE_IN_ATTENTION or _rope_linear(m) is not None)]


def rope_in_attention_of(model: nn.Module) -> bool:
    """Whether the model's decode steps run their rotary embedding and cache write in the split kernel now (inside
    grouped_decode_attention, given cache layers that write at the runner's position)."""
    return decode_kernel_of(model) == "split" and any("forward" in vars(m) and _rope_linear(m) is None
                                                      for m in _rope_modules(model))


def rope_in_qkv_of(model: nn.Module, rows: int) -> bool:
    """Whether the model's decode steps of this many sequences run their rotary embedding and cache write in the
    4-bit q/k/v kernel now (inside grouped_decode_attention, given cache layers that write at the runner's
    position)."""
    return decode_kernel_of(model) == "split" and any(
        "forward" in vars(m) and (f := _rope_linear(m)) is not None and f.rope_in_kernel_at(rows)
        for m in _rope_modules(model))


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
    changed, kernel_before, DECODE_KERNEL, swapped = [], DECODE_KERNEL, decode_kernel, []
    for model in models:
        if getattr(model.config, "_attn_implementation", None) == "sdpa":
            model.set_attn_implementation(NAME)
            changed.append(model)
        # also a model whose config an earlier one shares, switched with it (a throughput run's baseline)
        if decode_kernel == "split" and any(model.config is m.config for m in changed):
            for module in _rope_modules(model):
                module.forward = _rope_forward(module)
                swapped.append(module)
    try:
        yield
    finally:
        DECODE_KERNEL = kernel_before
        for module in swapped:
            del module.forward
        for model in changed:
            model.set_attn_implementation("sdpa")
