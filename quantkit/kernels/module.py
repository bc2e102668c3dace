"""W4A16Linear: the torch module the evaluator and validator swap into transformers models."""

from __future__ import annotations

import torch
from torch import nn

from quantkit.kernels.ops import (Fold, l2_prefetch, mlp_at, mlp_ready, rope_at, sm_count, w4a16_linear,
                                  w4a16_mlp, w4a16_rope_qkv)
from quantkit.kernels.packing import (PackedLinear, concat, glu_order, interleave_glu, interleave_rope, prepare,
                                      rope_order)
from quantkit.qlinear import QuantizedLinear


class W4A16Linear(nn.Module):
    """y = x W^T + b with W held 4-bit in a PackedLinear; forward calls w4a16_linear(backend=self.backend).
    With glu (concat_glu), the layer is a gated pair and forward gives silu(gate(x)) * up(x): out_features is half the
    packed layer's. With rope (heads, kv_heads, head_dim; concat_rope), the layer is a fused q/k/v projection whose
    rows are in packing.rope_order: forward gives them in their own order, and rope_qkv runs a decode step's rotary
    embedding and cache write in the kernel's epilogue. pdl: launch the decode kernel as a programmatic dependent
    launch (None: ops.STREAM_PDL)."""

    def __init__(self, packed: PackedLinear, bias: torch.Tensor | None = None, *, backend: str = "auto",
                 glu: bool = False, rope: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        self.packed = packed
        self.backend = backend
        self.glu = glu
        self.pdl: bool | None = None
        self.in_features = packed.in_features
        self.out_features = packed.out_features // 2 if glu else packed.out_features
        self.rope = rope
        # (rope) row i of the layer's own order is packed row natural[i]
        self.natural = rope_order(*rope).argsort().to(packed.device) if rope is not None else None
        if bias is not None:
            self.register_buffer("bias", bias.detach().to(packed.device))
        else:
            self.bias = None
        # (layer, first bytes of its weights or None for all, most rows): after its own kernel at up to that many
        # rows, this layer requests that one's weights into the L2 (quantkit.eval.prefetch sets it for a decode step)
        self.warm: tuple[PackedLinear, int | None, int] | None = None

    @classmethod
    def from_quantized(
        cls, ql: QuantizedLinear, *, device: torch.device | str, backend: str = "auto", **prepare_kwargs
    ) -> "W4A16Linear":
        return cls(prepare(ql, device=device, **prepare_kwargs), ql.bias, backend=backend)

    @classmethod
    def concat(cls, layers: list["W4A16Linear"]) -> "W4A16Linear":
        """One module computing several of the same input, outputs one after the other (packing.concat)."""
        return cls(concat([m.packed for m in layers]), _concat_bias(layers), backend=layers[0].backend)

    @classmethod
    def concat_glu(cls, gate: "W4A16Linear", up: "W4A16Linear") -> "W4A16Linear":
        """One module computing silu(gate(x)) * up(x), its rows interleaved for the kernel's epilogue
        (packing.interleave_glu)."""
        return cls(interleave_glu(gate.packed, up.packed), _concat_bias([gate, up], glu_order(gate.out_features)),
                   backend=gate.backend, glu=True)

    @classmethod
    def concat_rope(cls, q: "W4A16Linear", k: "W4A16Linear", v: "W4A16Linear", heads: int, kv_heads: int,
                    head_dim: int) -> "W4A16Linear":
        """One module computing q, k and v of one input, its q and k rows in packing.rope_order for rope_qkv."""
        parts = [q, k, v]
        bias = _concat_bias(parts, rope_order(heads, kv_heads, head_dim))
        return cls(interleave_rope([m.packed for m in parts], heads, kv_heads, head_dim), bias, backend=q.backend,
                   rope=(heads, kv_heads, head_dim))

    def rope_qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_cache: torch.Tensor,
                 value_cache: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """A decode step's q (rotated, [..., heads * head_dim]), with the rotated k and the v written into the caches
        at position (kernels.ops.w4a16_rope_qkv); a layer made by concat_rope."""
        q = w4a16_rope_qkv(x, self.packed, self.bias, cos, sin, key_cache, value_cache, position, self.rope[0],
                           backend=self.backend, pdl=self.pdl)
        self.warm_next(x.numel() // x.shape[-1], x.dtype)
        return q

    def rope_in_kernel_at(self, rows: int) -> bool:
        """Whether rope_qkv at this many rows runs the rotary epilogue in the kernel (kernels.ops.rope_at)."""
        return self.rope is not None and self.backend in ("auto", "kernel") and rope_at(rows, self.packed) is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear(x, self.glu)

    def forward_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The packed layer's own outputs (with glu: the gated pair's interleaved sums, before the SiLU and multiply,
        which kernels.ops.glu_interleaved applies; with rope: in rope order, which index_select(-1, natural) puts
        back)."""
        return self._linear(x, False, natural=False)

    def folded(self, x: torch.Tensor, fold: Fold) -> torch.Tensor:
        """forward with a decoder layer's residual add and RMSNorm folded in (kernels.ops.Fold; with fold.next_w the
        result is [2, ..., N])."""
        return self._linear(x, self.glu, fold)

    def fuses_with(self, down: nn.Module) -> bool:
        """Whether mlp() can run this gated pair (glu) and down in one launch at all (kernels.ops.mlp_ready; neither
        with a bias or an L2 prefetch of its own, both of one backend); fuses_at says at which rows."""
        return (isinstance(down, W4A16Linear) and self.glu and self.bias is None and down.bias is None
                and self.warm is None and down.warm is None and down.backend == self.backend
                and self.backend in ("auto", "kernel") and mlp_ready(self.packed, down.packed))

    def fuses_at(self, rows: int) -> bool:
        """For a down where fuses_with holds: whether mlp() at this many rows is one launch (kernels.ops.mlp_at)."""
        return mlp_at(rows, self.packed, sm_count(self.packed.device))

    def mlp(self, x: torch.Tensor, down: "W4A16Linear") -> torch.Tensor:
        """down(self(x)) for this gated pair (glu): one launch where fuses_with and fuses_at hold
        (kernels.ops.w4a16_mlp), else the two layers."""
        return w4a16_mlp(x, self.packed, down.packed, backend=self.backend, pdl=self.pdl, down_pdl=down.pdl)

    def _linear(self, x: torch.Tensor, glu: bool, fold: Fold | None = None, natural: bool = True) -> torch.Tensor:
        y = w4a16_linear(x, self.packed, self.bias, backend=self.backend,
                         warm=self._warm(x.numel() // max(1, x.shape[-1])), glu=glu, pdl=self.pdl, fold=fold)
        return y if self.natural is None or not natural else y.index_select(-1, self.natural)

    def _warm(self, rows: int) -> tuple[PackedLinear, int | None] | None:
        return self.warm[:2] if self.warm is not None and rows <= self.warm[2] else None

    def warm_next(self, rows: int, dtype: torch.dtype) -> int:
        """The L2 prefetch of self.warm's layer by a launch of its own (kernels.ops.l2_prefetch), where set and rows
        is within its limit, for a caller that ran this layer's kernel itself; the bytes requested."""
        warm = self._warm(rows)
        return l2_prefetch(warm[0], dtype, warm[1]) if warm is not None else 0

    def extra_repr(self) -> str:
        p = self.packed
        return (f"in_features={p.in_features}, out_features={self.out_features}, group_size={p.group_size}, "
                f"sym={p.sym}, act_order={p.perm is not None}, bias={self.bias is not None}, backend={self.backend!r}"
                + (", glu=True" if self.glu else "") + (f", rope={self.rope}" if self.rope else ""))


def _concat_bias(layers: list[W4A16Linear], order: torch.Tensor | None = None) -> torch.Tensor | None:
    """The layers' biases one after the other (zeros for a layer without one), in order's rows where given (the
    packed layer's row order); None where no layer has a bias."""
    if all(m.bias is None for m in layers):
        return None
    bias = torch.cat([m.bias if m.bias is not None else m.packed.scales.new_zeros(m.out_features) for m in layers])
    return bias if order is None else bias[order.to(bias.device)]
