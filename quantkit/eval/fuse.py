"""Fused projections for the throughput runs: the q, k and v projections of each attention block, and the gate and
up projections of each MLP, become one linear each, as serving engines (vLLM, TensorRT-LLM) run them: one weight
read and one launch instead of three or two. Small layers are where a decode kernel loses most to its fixed costs
(bench/results/kernel_h100.md: 4096x4096 at M = 1 streams 22% of the copy bandwidth, 28672x8192 64%).

Both models of a throughput run are fused the same way (nn.Linear by concatenating weights, W4A16Linear by
quantkit.kernels.packing.concat), so the comparison stays like for like; the run records which blocks it fused.
transformers' attention code calls q_proj, k_proj and v_proj one after the other on the same input: here q_proj
computes all three and keeps the result, and k_proj and v_proj return their slices of it (recomputing if they
are handed a different input). Fusion is in place and layer by layer (each block's separate weights are freed as
it goes), so it needs no second copy of the model.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from quantkit.errors import QuantkitError
from quantkit.eval import decode_attention

log = logging.getLogger(__name__)

# A 4-bit model's down projection after a gated pair (W4A16Linear.concat_glu, whose kernel applies the SiLU and
# multiply where it can: kernels.ops.GLU_EPILOGUE) launched as a programmatic dependent launch of that kernel: two of
# our kernels in a row, so that down's first weights are requested while gate/up finishes. QUANTKIT_GLU_PDL=0 turns
# it off; the eval records it.
GLU_PDL = os.environ.get("QUANTKIT_GLU_PDL", "1") != "0"
# A 4-bit model's o_proj is a programmatic dependent launch too where the split-KV attention kernels let it launch
# early (decode_attention.PDL, QUANTKIT_ATTENTION_PDL; after a kernel that does not, it launches as usual).
# Programmatic launches through the whole compiled decode step (docs/kernel.md item 56): inductor's kernels as
# programmatic launches that let the next one launch after their loads (its triton.enable_pdl, both models:
# quantkit.eval.throughput) and every 4-bit linear a programmatic dependent launch, so that q/k/v and gate/up request
# their weights while the normalization before them runs (with item 55's, the compiled decode 6.7% / 4.9% / 0.7%
# faster at batch 1 / 8 / 32 on one H100). QUANTKIT_INDUCTOR_PDL=0 turns it off.
INDUCTOR_PDL = os.environ.get("QUANTKIT_INDUCTOR_PDL", "1") != "0"


def _concat(layers: list[nn.Module]) -> nn.Module | None:
    """One linear computing ``layers`` (all nn.Linear, or all with a ``concat`` classmethod); None if they differ."""
    kinds = {type(m) for m in layers}
    if len(kinds) != 1 or len({getattr(m, "in_features", None) for m in layers}) != 1:
        return None
    kind = kinds.pop()
    if kind is nn.Linear:
        if len({m.bias is None for m in layers}) != 1:
            return None
        w = layers[0].weight
        fused = nn.Linear(w.shape[1], sum(m.out_features for m in layers), bias=layers[0].bias is not None,
                          device=w.device, dtype=w.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([m.weight for m in layers]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([m.bias for m in layers]))
        return fused.requires_grad_(False)
    if hasattr(kind, "concat"):
        try:
            return kind.concat(layers)
        except QuantkitError as e:  # layers quantized differently (act-order permutation, group size)
            log.info("not fusing %d projections: %s", len(layers), e)
    return None


class FusedProjections(nn.Module):
    """One linear for several projections of the same input; ``part(x, i)`` is projection i of x."""

    def __init__(self, fused: nn.Module, sizes: list[int]):
        super().__init__()
        self.fused = fused
        self.bounds = [(sum(sizes[:i]), sum(sizes[: i + 1])) for i in range(len(sizes))]
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None

    def part(self, x: torch.Tensor, i: int) -> torch.Tensor:
        if i == 0 or self._x is not x:  # the first projection computes them all; a different input is recomputed
            self._x, self._y = x, self.fused(x)
        lo, hi = self.bounds[i]
        y = self._y[..., lo:hi]
        if i == len(self.bounds) - 1:
            self._x = self._y = None  # the last projection drops the references
        return y


class ProjectionPart(nn.Module):
    """Projection i of a FusedProjections, where the separate projection was (q_proj, k_proj, v_proj)."""

    def __init__(self, shared: FusedProjections, i: int):
        super().__init__()
        if i == 0:
            self.shared = shared  # registered once, under the first part
        else:
            object.__setattr__(self, "shared", shared)
        self.i = i  # (no in/out_features: the fused linear inside is the quantized module, not this)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.part(x, self.i)


class FusedGatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) with gate and up as one linear (Llama, Mistral, Qwen2/3 MLPs); a gate_up with
    ``glu`` (W4A16Linear.concat_glu) returns silu(gate(x)) * up(x) itself."""

    def __init__(self, gate_up: nn.Module, down: nn.Module, act_fn, intermediate: int):
        super().__init__()
        self.gate_up, self.down_proj, self.act_fn, self.intermediate = gate_up, down, act_fn, intermediate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self.gate_up, "glu", False):
            return self.down_proj(self.gate_up(x))
        gate, up = self.gate_up(x).split(self.intermediate, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


def _is_silu(act) -> bool:
    return isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"


def _gated_pair(gate: nn.Module, up: nn.Module, act) -> nn.Module | None:
    """gate and up as one gated pair (concat_glu) where both have it and act is SiLU; else None."""
    if not (_is_silu(act) and type(gate) is type(up) and hasattr(type(gate), "concat_glu")):
        return None
    try:
        return type(gate).concat_glu(gate, up)
    except QuantkitError as e:  # quantized differently (act-order permutation, group size), or not a multiple of 8
        log.info("gate and up not as a gated pair: %s", e)
        return None


# transformers model types whose attention calls q/k/v_proj in that order on one input and whose MLP is
# down(act(gate(x)) * up(x)) (checked against transformers 5.x's modeling code).
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def _programmatic(linear: nn.Module | None, info: dict, key: str) -> None:
    """linear launched as a programmatic dependent launch where it is one of our kernels' (it has pdl), counted in
    info[key]."""
    if hasattr(linear, "pdl"):
        linear.pdl = True
        info[key] = info.get(key, 0) + 1


def fuse_projections(model: nn.Module) -> dict:
    """Fuse q/k/v and gate/up in every decoder block of ``model``, in place (blocks already fused are left as they
    are). Returns how many blocks it fused."""
    info = {"qkv": 0, "gate_up": 0, "glu": 0, "model_type": getattr(model.config, "model_type", None)}
    if info["model_type"] not in MODEL_TYPES:
        info["skipped"] = f"model type {info['model_type']!r} is not one of {', '.join(MODEL_TYPES)}"
        return info
    for block in model.get_decoder().layers:
        attn, mlp = getattr(block, "self_attn", None), getattr(block, "mlp", None)
        names = ("q_proj", "k_proj", "v_proj")
        if attn is not None and all(isinstance(getattr(attn, n, None), nn.Module) and
                                    not isinstance(getattr(attn, n), ProjectionPart) for n in names):
            parts = [getattr(attn, n) for n in names]
            fused = _concat(parts)
            if fused is not None:
                shared = FusedProjections(fused, [m.out_features for m in parts])
                for i, n in enumerate(names):
                    setattr(attn, n, ProjectionPart(shared, i))
                info["qkv"] += 1
        if mlp is not None and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            pair = _gated_pair(mlp.gate_proj, mlp.up_proj, mlp.act_fn)
            fused = pair if pair is not None else _concat([mlp.gate_proj, mlp.up_proj])
            if fused is not None:
                block.mlp = FusedGatedMLP(fused, mlp.down_proj, mlp.act_fn, mlp.gate_proj.out_features)
                info["gate_up"] += 1
            if pair is not None:
                info["glu"] += 1
                if GLU_PDL:
                    _programmatic(mlp.down_proj, info, "glu_pdl")
        if decode_attention.PDL:  # the attention kernels let o_proj launch early
            _programmatic(getattr(attn, "o_proj", None), info, "o_proj_pdl")
        if INDUCTOR_PDL:
            linears = [getattr(attn, "q_proj", None), getattr(getattr(block, "mlp", None), "gate_up", None)]
            for linear in linears:  # q/k/v (shared by its parts) and gate/up, after inductor's normalizations
                _programmatic(getattr(getattr(linear, "shared", None), "fused", linear), info, "norm_pdl")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return info
