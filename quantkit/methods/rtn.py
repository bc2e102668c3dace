"""Round-to-nearest group quantization: every group gets its best grid (quantkit.methods.grid), no calibration."""

from __future__ import annotations

import torch

from quantkit.methods import grid
from quantkit.qlinear import QuantizedLinear

CHUNK_ELEMENTS = 1 << 20  # weights per block of rows (4 MB in fp32)


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
    """Quantize a [N, K] weight with groups of ``group_size`` consecutive inputs.

    Groups are independent, so the rows are done a block at a time: the fp32 working copies of the scale search
    stay near ``CHUNK_ELEMENTS`` values whatever the layer's size (the result is the same as in one piece)."""
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"group size {group_size} does not divide K={k}")
    groups = k // group_size
    codes = torch.empty(n, k, dtype=torch.uint8, device=weight.device)
    scales = torch.empty(groups, n, dtype=scale_dtype, device=weight.device)
    zeros = torch.empty(groups, n, dtype=torch.uint8, device=weight.device)
    step = max(1, CHUNK_ELEMENTS // k)
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        w = weight[rows].float().reshape(-1, groups, group_size)
        scale, zero = grid.fit(w, bits=bits, sym=sym, scale_dtype=scale_dtype, min_zero=min_zero, search=search)
        codes[rows] = grid.round_codes(w, scale, zero, bits).reshape(-1, k)
        scales[:, rows] = scale.T
        zeros[:, rows] = zero.T
    return QuantizedLinear(
        codes=codes,
        scales=scales,
        zeros=zeros,
        g_idx=torch.arange(k, dtype=torch.int32) // group_size,
        bits=bits,
        group_size=group_size,
        sym=sym,
        bias=bias,
    )
