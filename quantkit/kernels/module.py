"""W4A16Linear: the torch module the evaluator and validator swap into transformers models."""

from __future__ import annotations

import torch
from torch import nn

from quantkit.kernels.ops import w4a16_linear
from quantkit.kernels.packing import PackedLinear, prepare
from quantkit.qlinear import QuantizedLinear


class W4A16Linear(nn.Module):
    """y = x W^T + b with W held 4-bit in a PackedLinear; forward calls w4a16_linear(backend=self.backend)."""

    def __init__(self, packed: PackedLinear, bias: torch.Tensor | None = None, *, backend: str = "auto") -> None:
        super().__init__()
        self.packed = packed
        self.backend = backend
        self.in_features = packed.in_features
        self.out_features = packed.out_features
        if bias is not None:
            self.register_buffer("bias", bias.detach().to(packed.device))
        else:
            self.bias = None

    @classmethod
    def from_quantized(
        cls, ql: QuantizedLinear, *, device: torch.device | str, backend: str = "auto", **prepare_kwargs
    ) -> "W4A16Linear":
        return cls(prepare(ql, device=device, **prepare_kwargs), ql.bias, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return w4a16_linear(x, self.packed, self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        p = self.packed
        return (f"in_features={p.in_features}, out_features={p.out_features}, group_size={p.group_size}, "
                f"sym={p.sym}, act_order={p.perm is not None}, bias={self.bias is not None}, backend={self.backend!r}")
