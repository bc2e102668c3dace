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
from quantkit.eval.attention import ROPE_MODEL_TYPES
from quantkit.kernels.ops import Fold

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
# A 4-bit model's fused q/k/v with its q and k rows in packing.rope_order (W4A16Linear.concat_rope), so that a decode
# step's rotary embedding and cache write run in the q/k/v kernel's epilogue (kernels.ops.w4a16_rope_qkv, through
# attention.grouped_decode_attention's forward of the attention blocks) instead of in a kernel of their own between
# it and the split-KV attention (docs/kernel.md item 69), at steps of up to 8 sequences (kernels.ops.rope_at). Where
# the attention is Llama's (attention.ROPE_MODEL_TYPES, no q/k norm). Read when the model is fused; off unless
# QUANTKIT_ROPE_IN_QKV=1 (not measured yet; the eval records where it ran).
ROPE_IN_QKV = os.environ.get("QUANTKIT_ROPE_IN_QKV", "0") == "1"


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
        self._primed = False

    def prime(self, x: torch.Tensor, fold) -> None:
        """Compute the projections of x with a decoder layer's RMSNorm folded in (kernels.ops.Fold), for the parts
        that the attention then asks for with x (FoldedDecoderLayer)."""
        self._x, self._y, self._primed = x, self.fused.folded(x, fold), True

    def part(self, x: torch.Tensor, i: int) -> torch.Tensor:
        # the first projection computes them all (unless primed with x); a different input is recomputed
        if (i == 0 and not self._primed) or self._x is not x:
            self._x, self._y = x, self.fused(x)
        self._primed = False
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
    ``glu`` (W4A16Linear.concat_glu) returns silu(gate(x)) * up(x) itself, and where it fuses with down at the step's
    rows (W4A16Linear.fuses_with / fuses_at: kernels.ops.w4a16_mlp, a decode step's MLP in one launch) runs both."""

    def __init__(self, gate_up: nn.Module, down: nn.Module, act_fn, intermediate: int):
        super().__init__()
        self.gate_up, self.down_proj, self.act_fn, self.intermediate = gate_up, down, act_fn, intermediate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self.gate_up, "glu", False):
            fuses = getattr(self.gate_up, "fuses_with", None)
            if fuses is not None and fuses(self.down_proj) and self.gate_up.fuses_at(x.numel() // x.shape[-1]):
                return self.gate_up.mlp(x, self.down_proj)
            return self.down_proj(self.gate_up(x))
        gate, up = self.gate_up(x).split(self.intermediate, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


# A 4-bit model's decoder layers with their residual adds and RMSNorms folded into its kernels (FoldedDecoderLayer) at
# steps of up to NORM_FOLD_ROWS tokens (the decode steps of those batches): the two normalizations and the residual
# adds of a layer are then no launches of their own. Off unless QUANTKIT_NORM_FOLD=1: on the H100 the compiled batch-1
# decode was 1.6% slower with it in session 44 (docs/kernel.md item 58: each q/k/v and gate/up block reading its rows of
# the stream after its main loop), and with those reads right after each warp's wait and the blocks of 8 warps
# (session 52, item 64) as fast as without it (410.3 against 410.0 tok/s on one machine): no gain to turn it on for.
# QUANTKIT_NORM_FOLD_ROWS sets the rows; the eval records both.
NORM_FOLD = os.environ.get("QUANTKIT_NORM_FOLD", "0") != "0"
NORM_FOLD_ROWS = int(os.environ.get("QUANTKIT_NORM_FOLD_ROWS", "1"))
# With the fold, o_proj and down also write the stream's sums of squares by 16 features (kernels.ops.Fold.ss), and
# gate/up's and the next layer's q/k/v blocks add up their token's row of them, loaded after their wait, instead of
# reading the stream's row (docs/kernel.md item 65); QUANTKIT_NORM_FOLD_SS=0 turns that off, and
# QUANTKIT_NORM_FOLD_SS_DOWN=0 down's part alone (at batch 1 down splits, and writing the sums takes it from a cluster
# to the workspace). On one H200 (session 53) the fold with both decoded 446.4 tok/s against 470.2 without the fold.
NORM_FOLD_SS = os.environ.get("QUANTKIT_NORM_FOLD_SS", "1") != "0"
NORM_FOLD_SS_DOWN = os.environ.get("QUANTKIT_NORM_FOLD_SS_DOWN", "1") != "0"


class DeferredProjection(nn.Module):
    """In an attention block folded by FoldedDecoderLayer, where o_proj was: the attention's output passes through,
    and the layer applies o_proj (``inner``) itself, with the residual add folded in."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _rms_eps(norm: nn.Module) -> float | None:
    """The epsilon of an RMSNorm of transformers' Llama form (weight * normalized), or None for anything else."""
    eps = getattr(norm, "variance_epsilon", None)
    weight = getattr(norm, "weight", None)
    if not type(norm).__name__.endswith("RMSNorm") or not isinstance(eps, float) or weight is None:
        return None
    return eps


class FoldedDecoderLayer(nn.Module):
    """A decoder block (pre-norm attention and gated MLP with transformers' Llama RMSNorm; its 4-bit q/k/v, o_proj,
    gate/up pair and down) whose residual adds and normalizations run inside its kernels at steps of up to
    NORM_FOLD_ROWS tokens (kernels.ops.Fold): q/k/v take x = round(h * norm weight) and scale their rows by the norm's
    rsqrt(mean(h^2) + eps); o_proj writes the stream after its residual add and the next normalization's x (its weight
    times that stream), gate/up scales like q/k/v, down writes the stream and the next layer's x. With NORM_FOLD_SS,
    o_proj and down (NORM_FOLD_SS_DOWN) also write the stream's sums of squares by 16 features (Fold.ss) that gate/up
    and the next layer's q/k/v add up. Between folded layers the hidden states are ([2, ..., D], ss or None): the stream
    h and that x, and those sums; the first layer makes x in torch ops (and no sums), the last returns h alone. At more
    tokens, the block's own order of operations (o_proj called here). Every decoder block of the model is folded or none
    (fold_layers)."""

    def __init__(self, block: nn.Module, next_norm: nn.Module | None):
        super().__init__()
        self.self_attn, self.mlp = block.self_attn, block.mlp
        self.input_layernorm, self.post_attention_layernorm = block.input_layernorm, block.post_attention_layernorm
        if hasattr(block, "attention_type"):  # read by the model's loop (sliding-window layers)
            self.attention_type = block.attention_type
        self.self_attn.o_proj = DeferredProjection(block.self_attn.o_proj)
        self.eps_in, self.eps_post = _rms_eps(self.input_layernorm), _rms_eps(self.post_attention_layernorm)
        object.__setattr__(self, "next_norm", next_norm)  # the next layer's input_layernorm (its module, not ours)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        attn, mlp = self.self_attn, self.mlp
        carry = isinstance(hidden_states, tuple)  # ([2, ..., D], ss) from the folded layer before
        h = hidden_states[0][0] if carry else hidden_states
        if not (carry or (NORM_FOLD and h.numel() // h.shape[-1] <= NORM_FOLD_ROWS)):
            x, _ = attn(hidden_states=self.input_layernorm(h), **kwargs)
            h = h + attn.o_proj.inner(x)
            return h + mlp(self.post_attention_layernorm(h))
        x = hidden_states[0][1] if carry else h * self.input_layernorm.weight
        attn.q_proj.shared.prime(x, Fold(rms=h, eps=self.eps_in, ss=hidden_states[1] if carry else None))
        a, _ = attn(hidden_states=x, **kwargs)
        ss = self._sums(h)
        hx = attn.o_proj.inner.folded(a, Fold(residual=h, next_w=self.post_attention_layernorm.weight, ss=ss))
        u = mlp.gate_up.folded(hx[1], Fold(rms=hx[0], eps=self.eps_post, ss=ss))
        if self.next_norm is None:
            return mlp.down_proj.folded(u, Fold(residual=hx[0]))
        ss = self._sums(h) if NORM_FOLD_SS_DOWN else None
        return mlp.down_proj.folded(u, Fold(residual=hx[0], next_w=self.next_norm.weight, ss=ss)), ss

    @staticmethod
    def _sums(h: torch.Tensor) -> torch.Tensor | None:
        """An empty Fold.ss for the stream like h, where NORM_FOLD_SS holds and its width is a multiple of 16."""
        d = h.shape[-1]
        return h.new_empty(*h.shape[:-1], d // 16, dtype=torch.float32) if NORM_FOLD_SS and d % 16 == 0 else None


def _foldable(block: nn.Module) -> bool:
    attn, mlp = getattr(block, "self_attn", None), getattr(block, "mlp", None)
    q = getattr(attn, "q_proj", None)
    linears = [getattr(getattr(q, "shared", None), "fused", None), getattr(attn, "o_proj", None),
               getattr(mlp, "gate_up", None), getattr(mlp, "down_proj", None)]
    return (isinstance(q, ProjectionPart) and isinstance(mlp, FusedGatedMLP) and getattr(mlp.gate_up, "glu", False)
            and all(hasattr(m, "folded") for m in linears)
            and all(_rms_eps(getattr(block, n, None)) is not None
                    for n in ("input_layernorm", "post_attention_layernorm")))


def fold_layers(model: nn.Module) -> int:
    """Every decoder block of ``model`` (already fused: fuse_projections) as a FoldedDecoderLayer, in place, where all
    of them can be (4-bit q/k/v, o_proj, gated pair and down, Llama RMSNorms); returns how many (0: none)."""
    layers = model.get_decoder().layers
    if not len(layers) or not all(isinstance(b, FoldedDecoderLayer) or _foldable(b) for b in layers):
        return 0
    for i, block in enumerate(layers):
        if not isinstance(block, FoldedDecoderLayer):
            layers[i] = FoldedDecoderLayer(block, None)
    for i, layer in enumerate(layers):
        object.__setattr__(layer, "next_norm", layers[i + 1].input_layernorm if i + 1 < len(layers) else None)
    return len(layers)


def _rope_fused(attn: nn.Module, parts: list[nn.Module], model_type: str | None) -> nn.Module | None:
    """q, k and v as one linear in rope order (concat_rope) where ROPE_IN_QKV holds and the block can run its rotary
    embedding in the kernel's epilogue; else None."""
    kind = type(parts[0])
    if (not ROPE_IN_QKV or model_type not in ROPE_MODEL_TYPES or hasattr(attn, "q_norm")
            or any(type(p) is not kind for p in parts) or not hasattr(kind, "concat_rope")):
        return None
    heads, kv_heads = decode_attention.head_counts(attn.config)
    try:
        return kind.concat_rope(*parts, heads, kv_heads, attn.head_dim)
    except QuantkitError as e:  # quantized differently, or a head size the epilogue does not pair
        log.info("q/k/v not in rope order: %s", e)
        return None


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
            fused = _rope_fused(attn, parts, info["model_type"])
            if fused is not None:
                info["rope_qkv"] = info.get("rope_qkv", 0) + 1
            else:
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
    folded = fold_layers(model) if NORM_FOLD else 0
    if folded:
        info.update(norm_fold=folded, norm_fold_rows=NORM_FOLD_ROWS, norm_fold_ss=NORM_FOLD_SS,
                    norm_fold_ss_down=NORM_FOLD_SS and NORM_FOLD_SS_DOWN)
    return info
