"""Round-to-nearest group quantization: every group gets its best grid (quantkit.methods.grid), no calibration."""

from __future__ import annotations

import torch

from quantkit.methods import grid
from quantkit.qlinear import QuantizedLinear


def quantize(
    weight: torch.Tensor,
    *,
    bits: int,
    group_size: int,
    sym: bool,
    scale_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    min_zero: int = 1,
    search: bool = True,
) -> QuantizedLinear:
    """Quantize a [N, K] weight with groups of ``group_size`` consecutive inputs."""
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"group size {group_size} does not divide K={k}")
    w = weight.float().reshape(n, k // group_size, group_size)
    scale, zero = grid.fit(w, bits=bits, sym=sym, scale_dtype=scale_dtype, min_zero=min_zero, search=search)
    codes = grid.round_codes(w, scale, zero, bits).reshape(n, k)
    return QuantizedLinear(
        codes=codes.to(torch.uint8),
        scales=scale.T.contiguous().to(scale_dtype),
        zeros=zero.T.contiguous().to(torch.uint8),
        g_idx=torch.arange(k, dtype=torch.int32) // group_size,
        bits=bits,
        group_size=group_size,
        sym=sym,
        bias=bias,
    )
