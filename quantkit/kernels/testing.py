"""Random quantized layers and the error measure the self-check, the tests and the benchmark share.

Tolerance (relative Frobenius error of an output against the fp64 product of the same dequantized weights):
the kernels use weights bit-identical to the reference's (scale * (q - zero) rounded once to the activation
dtype) and accumulate in fp32, so what is left is the final rounding of the output to 16 bits: its rms relative
error is about ulp/sqrt(12), 1.6e-3 for bf16 (8 significant bits) and 2e-4 for fp16 (11). We allow 2.5x that:
4e-3 (bf16) and 1e-3 (fp16; the dot2 path's factored zero correction loses ~1e-4 to cancellation). The dot2
path adds split-K partials into the 16-bit output (formats.md §2), one more rounding per split: its bound
grows with sqrt(splits); so does the WMMA path's (at most 4 splits: ops.WMMA_MAX_SPLITS). A wrong index, a missed
group or a stale zero gives errors of order 1. A gated pair's output (w4a16_linear(glu=True): silu(gate) * up of the
fp32 sums, rounded once) is held to twice TOLERANCE (GLU_TOLERANCE), the size of the unfused path's two roundings (the
sums, then the product), against silu(gate) * up of the fp64 products. A folded RMSNorm's scale (ops.Fold: the fp32
sums scaled, rounded once) is held to the same (FOLD_TOLERANCE) against the kernel's own 16-bit output scaled after it.
"""

from __future__ import annotations

import math

import torch

from quantkit.qlinear import QuantizedLinear

TOLERANCE = {torch.bfloat16: 4e-3, torch.float16: 1e-3}
GLU_TOLERANCE = {dtype: 2 * tol for dtype, tol in TOLERANCE.items()}
FOLD_TOLERANCE = GLU_TOLERANCE


def random_qlinear(
    n: int, k: int, *, group_size: int, sym: bool, act_order: bool, dtype: torch.dtype, seed: int,
    device: str | torch.device = "cpu", draw_on_device: bool = False,
) -> QuantizedLinear:
    """A layer with random codes, zeros and positive scales of a realistic size (weights ~ 0.02). draw_on_device: draw
    with a generator of ``device`` (seeded with seed; other numbers than the CPU's), which on a GPU makes gigabytes of
    layers in seconds."""
    gen = torch.Generator(device=device if draw_on_device else "cpu").manual_seed(seed)
    on = gen.device
    groups = k // group_size
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8, device=on)
    zeros = (torch.full((groups, n), 8, dtype=torch.uint8, device=on) if sym
             else torch.randint(1, 16, (groups, n), generator=gen, dtype=torch.uint8, device=on))
    scales = (torch.rand(groups, n, generator=gen, device=on) * 0.004 + 0.001).to(dtype)
    g_idx = torch.arange(k, dtype=torch.int32, device=on) // group_size
    if act_order:
        g_idx = g_idx[torch.randperm(k, generator=gen, device=on)]
    return QuantizedLinear(codes=codes.to(device), scales=scales.to(device), zeros=zeros.to(device),
                           g_idx=g_idx.to(device), bits=4, group_size=group_size, sym=sym)


def random_activations(m: int, k: int, *, dtype: torch.dtype, seed: int, device) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(m, k, generator=gen).to(dtype).to(device)


def _product(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    truth = x.double() @ weight.double().T
    return truth if bias is None else truth + bias.double()


def error_against(y: torch.Tensor, truth: torch.Tensor) -> float:
    """||y - truth|| / ||truth|| (inf where y is not finite)."""
    err = (y.double() - truth).norm() / truth.norm().clamp_min(1e-30)
    return float("inf") if not torch.isfinite(y).all() else float(err)


def relative_error(y: torch.Tensor, weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> float:
    """||y - x W^T - b|| / ||x W^T + b||, the truth computed in fp64 from the same (dequantized) weight."""
    return error_against(y, _product(weight, x, bias))


def glu_relative_error(y: torch.Tensor, weight: torch.Tensor, x: torch.Tensor,
                       bias: torch.Tensor | None = None) -> float:
    """relative_error of a gated pair's output y [M, N / 2] (weight [N, K] in packing.glu_order): against silu(gate) *
    up of the fp64 products."""
    from quantkit.kernels.ops import glu_interleaved  # (ops imports this module through selfcheck)

    return error_against(y, glu_interleaved(_product(weight, x, bias)))


def tolerance(dtype: torch.dtype, *, backend: str, k: int = 0, group_size: int = 128) -> float:
    if backend == "wmma":
        return TOLERANCE[dtype] * 2  # sqrt(WMMA_MAX_SPLITS)
    if backend != "dot2":
        return TOLERANCE[dtype]
    from quantkit.kernels.ops import dot2_k_split  # (ops imports this module through selfcheck)

    return TOLERANCE[dtype] * math.sqrt(max(1, math.ceil(k / dot2_k_split(group_size))))
