"""The pure-torch reference behind w4a16_linear's signature: unpack the GPTQ tensors with quantkit.formats.gptq,
dequantize with QuantizedLinear.dequantize (fp32, cast to the activation dtype), then one F.linear.

It runs wherever torch runs (CPU included) and is what every kernel is checked against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantkit.kernels.packing import PackedLinear


def reference_weight(packed: PackedLinear, dtype: torch.dtype) -> torch.Tensor:
    """The [N, K] weight the layer stands for, in ``dtype`` (the reference's rounding of scale * (q - zero))."""
    return packed.reference_qlinear().dequantize(dtype)


def reference_linear(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None = None) -> torch.Tensor:
    weight = reference_weight(packed, x.dtype).to(x.device)
    return F.linear(x, weight, None if bias is None else bias.to(x.dtype))
