"""The neutral representation of one quantized linear layer, shared by every method and every writer.

A linear computes y = x W^T with W of shape [N, K]. Groups run along K; the group of input k is g_idx[k]
(k // group_size unless act-order without static groups). Dequantized weight:

    w[n, k] = scales[g_idx[k], n] * (codes[n, k] - zeros[g_idx[k], n])

Codes and zeros are *unpacked* integers here; packing belongs to the writers (quantkit.formats).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantizedLinear:
    codes: torch.Tensor  # uint8 [N, K], 0 .. 2**bits - 1
    scales: torch.Tensor  # float (model dtype) [G, N], G = K // group_size
    zeros: torch.Tensor  # uint8 [G, N], the true zero point (symmetric 4-bit: 8)
    g_idx: torch.Tensor  # int32 [K]
    bits: int
    group_size: int
    sym: bool
    bias: torch.Tensor | None = None  # [N] or None

    def __post_init__(self) -> None:
        n, k = self.codes.shape
        groups = k // self.group_size
        if self.codes.dtype != torch.uint8:
            raise ValueError(f"codes must be uint8, got {self.codes.dtype}")
        if k % self.group_size:
            raise ValueError(f"group size {self.group_size} does not divide K={k}")
        if tuple(self.scales.shape) != (groups, n) or tuple(self.zeros.shape) != (groups, n):
            raise ValueError(
                f"scales {tuple(self.scales.shape)} / zeros {tuple(self.zeros.shape)} must be [{groups}, {n}]"
            )
        if tuple(self.g_idx.shape) != (k,):
            raise ValueError(f"g_idx must have shape [{k}], got {tuple(self.g_idx.shape)}")

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def in_features(self) -> int:
        return self.codes.shape[1]

    @property
    def static_groups(self) -> bool:
        """True when g_idx is the plain k // group_size (loadable by every kernel and GGUF)."""
        k = self.in_features
        expected = torch.arange(k, dtype=torch.int32) // self.group_size
        return bool(torch.equal(self.g_idx.to(torch.int32).cpu(), expected))

    def dequantize(self, dtype: torch.dtype = torch.float32, *, rows: slice = slice(None)) -> torch.Tensor:
        """The [N, K] weight this layer stands for (or its ``rows``), computed in fp32 and cast to ``dtype``."""
        g = self.g_idx.long()
        scale = self.scales[:, rows].float()[g].T  # [N, K]
        zero = self.zeros[:, rows].float()[g].T
        return (scale * (self.codes[rows].float() - zero)).to(dtype)


def concat(layers: list[QuantizedLinear]) -> QuantizedLinear:
    """One layer for several of the same input: output rows one after the other (e.g. q, k and v projections).
    They must share K, bits, group size and g_idx."""
    first = layers[0]
    for i, ql in enumerate(layers):
        if (ql.in_features, ql.bits, ql.group_size) != (first.in_features, first.bits, first.group_size) or \
                not torch.equal(ql.g_idx, first.g_idx):
            raise ValueError(f"layer {i} differs from layer 0 in K, bits, group size or g_idx; it cannot be concatenated")
    bias = None
    if any(ql.bias is not None for ql in layers):
        bias = torch.cat([ql.bias if ql.bias is not None else ql.scales.new_zeros(ql.out_features) for ql in layers])
    return QuantizedLinear(codes=torch.cat([ql.codes for ql in layers]), scales=torch.cat([ql.scales for ql in layers], 1),
                           zeros=torch.cat([ql.zeros for ql in layers], 1), g_idx=first.g_idx, bits=first.bits,
                           group_size=first.group_size, sym=all(ql.sym for ql in layers), bias=bias)
