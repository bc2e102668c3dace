"""The GPTQ maths for one linear (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization"), as a pure
function: a weight and the Hessian of its layer's inputs in, a neutral QuantizedLinear and the loss out.

    W [N, K]   the fp32 weight (rows are outputs; GPTQ treats every row independently, so linears that share
               their input, e.g. q/k/v or gate/up, can be solved as one stacked weight)
    H [K, K]   mean of x x^T over the calibration tokens that reached the linear

Columns are quantized one at a time; the rounding error of column k, divided by the k-th diagonal of the upper
Cholesky factor U of H^-1, is spread over the columns not yet quantized (W[:, k:] -= err * U[k, k:]). Updates
are applied lazily, ``block_size`` columns at a time. Each group's scale/zero come from quantkit.methods.grid
(the same search as round-to-nearest):

- static groups (``static_groups``): every group's grid is fitted on the original weight before any update, so
  act-order can permute columns while g_idx stays k // group_size (loadable by every kernel and by GGUF);
- dynamic groups: a group's grid is fitted when its first column comes up, on the already-updated weight; with
  act-order the groups then follow the permuted order and g_idx records it.

Numerical rules (deterministic, never NaN):
- a dead input (diagonal of H <= 0: the input was always zero) gets H[k, k] = 1 and no coupling; its column is
  rounded to nearest and passes no error on. Its weight is kept, not zeroed.
- dampening adds ``damp_percent`` * mean(diag H) to the diagonal; if the Cholesky factorisation still fails the
  dampening is multiplied by 10, up to 6 times; after that (or for a non-finite H) NumericalError is raised and
  the caller falls back to round-to-nearest, saying so. A zero H (no signal at all) raises NumericalError too.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from quantkit.methods import grid
from quantkit.qlinear import QuantizedLinear

DAMP_RETRIES = 6


class NumericalError(ValueError):
    """The Hessian cannot be used (non-finite, or not positive definite even after dampening)."""


@dataclass(frozen=True)
class Solution:
    qlinear: QuantizedLinear
    loss: float  # GPTQ's objective: sum over columns of err^2 / (2 * U[k, k]^2)
    damp: float  # the dampening actually added to the diagonal (after retries)
    dead_inputs: int  # inputs whose diagonal of H was zero


@contextmanager
def _small_ops(device: torch.device):
    """On the CPU, run the column loop on one thread: its many small ops gain nothing from more threads and slow
    down by orders of magnitude when those threads compete with other processes for the cores."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def inverse_factor(h: torch.Tensor, damp_percent: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + damp I)^-1, and the dampening used. Raises NumericalError if none works."""
    diag = torch.diagonal(h)
    mean = float(diag.mean())
    if not torch.isfinite(h).all() or not mean > 0:
        raise NumericalError("Hessian is not finite or has no signal")
    damp = damp_percent * mean
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for _ in range(DAMP_RETRIES + 1):
        lower, info = torch.linalg.cholesky_ex(h + damp * eye)
        if int(info) == 0:
            # H^-1 = L^-T L^-1 (triangular solve: torch.cholesky_inverse is very slow on some CPU builds)
            lower_inv = torch.linalg.solve_triangular(lower, eye, upper=False)
            upper, info = torch.linalg.cholesky_ex(lower_inv.T @ lower_inv, upper=True)
            if int(info) == 0 and torch.isfinite(upper).all():
                return upper, damp
        damp = max(damp, 1e-8 * mean) * 10
    raise NumericalError(f"Hessian is not positive definite even with dampening {damp / 10:.3g}")


def solve(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    bits: int,
    group_size: int,
    sym: bool,
    scale_dtype: torch.dtype,
    damp_percent: float = 0.01,
    block_size: int = 128,
    act_order: bool = True,
    static_groups: bool = True,
    min_zero: int = 1,
    bias: torch.Tensor | None = None,
) -> Solution:
    """GPTQ-quantize ``weight`` [N, K] against ``hessian`` [K, K] (both on one device, where the result stays)."""
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"group size {group_size} does not divide K={k}")
    if tuple(hessian.shape) != (k, k):
        raise ValueError(f"Hessian shape {tuple(hessian.shape)} does not match K={k}")
    w = weight.float().clone()
    h = hessian.float().clone()
    if not torch.isfinite(h).all():
        raise NumericalError("Hessian is not finite (non-finite calibration activations)")
    dead = torch.diagonal(h) <= 0
    if bool(dead.all()):
        raise NumericalError("Hessian is zero: no calibration signal reached this linear")
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1
    fit = dict(bits=bits, sym=sym, scale_dtype=scale_dtype, min_zero=min_zero)
    groups = k // group_size

    if static_groups:
        scale_s, zero_s = grid.fit(w.reshape(n, groups, group_size), **fit)  # [N, groups]
    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(h), descending=True, stable=True)
        w, h = w[:, perm], h[perm][:, perm]
    upper, damp = inverse_factor(h, damp_percent)
    del h

    # Block size: a multiple of the group size so that a dynamic group is fitted inside one block.
    block = max(group_size, (block_size // group_size) * group_size)
    wt = w.T.contiguous()  # [K, N]: column k of W is the contiguous row k here
    del w
    codes = torch.empty(k, n, dtype=torch.uint8, device=wt.device)
    scales = torch.empty(n, groups, dtype=torch.float32, device=wt.device)
    zeros = torch.empty(n, groups, dtype=torch.float32, device=wt.device)
    group_of = (perm if perm is not None else torch.arange(k, device=wt.device)) // group_size  # [K] group of column
    with _small_ops(wt.device):
        loss = _columns(wt, upper, codes, scales, zeros, scale_s if static_groups else None,
                        zero_s if static_groups else None, group_of, block, group_size, bits, fit)
    codes = codes.T
    if static_groups:
        scales, zeros = scale_s, zero_s
    g_idx = torch.arange(k, dtype=torch.int32, device=codes.device) // group_size
    if perm is not None:
        inverse = torch.argsort(perm)
        codes = codes[:, inverse]
        if not static_groups:
            g_idx = (inverse // group_size).to(torch.int32)  # input k sat at position inverse[k]
    ql = QuantizedLinear(
        codes=codes.contiguous(),
        scales=scales.T.contiguous().to(scale_dtype),
        zeros=zeros.T.contiguous().to(torch.uint8),
        g_idx=g_idx,
        bits=bits,
        group_size=group_size,
        sym=sym,
        bias=bias,
    )
    return Solution(ql, float(loss), damp, int(dead.sum()))


def _columns(wt, upper, codes, scales, zeros, scale_s, zero_s, group_of, block, group_size, bits, fit) -> torch.Tensor:
    """The GPTQ column loop on wt [K, N] (in place), filling codes [K, N] and, for dynamic groups, scales/zeros
    [N, groups]; static groups read scale_s/zero_s [N, groups]. Returns the loss."""
    k, n = wt.shape
    loss = torch.zeros((), dtype=torch.float64, device=wt.device)
    if scale_s is not None:
        scale_rows, zero_rows = scale_s.T.contiguous(), zero_s.T.contiguous()  # [groups, N]
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        u1 = upper[i1:i2, i1:i2]
        if scale_s is not None:  # every column's grid is known: the whole inner loop is one fixed program
            cols = group_of[i1:i2]
            q1, err1 = _static_block(wt[i1:i2], u1, scale_rows[cols], zero_rows[cols], bits)
        else:
            q1, err1 = _dynamic_block(wt[i1:i2].clone(), u1, scales, zeros, i1, group_size, bits, fit)
        codes[i1:i2] = q1.to(torch.uint8)
        loss += err1.double().square().sum() / 2
        if i2 < k:
            wt[i2:].addmm_(upper[i1:i2, i2:].T, err1, alpha=-1)
    return loss


def _block_body(w1, u1, s1, z1, q1, err1, maxq: int) -> None:
    """Quantize the rows of w1 [B, N] one after another (s1/z1 [B, N] their grids), spreading each row's error
    over the rows below it; codes to q1, scaled errors to err1. The same ops as grid.round_codes."""
    for i in range(w1.shape[0]):
        x = w1[i]
        q = torch.round(x / s1[i]).add_(z1[i]).clamp_(0, maxq)
        q1[i] = q
        e = (x - s1[i] * (q - z1[i])).div_(u1[i, i])
        err1[i] = e
        w1[i:].addr_(u1[i, i:], e, alpha=-1)


USE_CUDA_GRAPHS = True  # tests switch it off to compare with the eager loop
_GRAPHS: dict[tuple, "_GraphedBlock"] = {}
_MAX_GRAPHS = 16


class _GraphedBlock:
    """_block_body for one (B, N) captured as a CUDA graph: thousands of tiny kernels replayed without Python or
    launch overhead. Same kernels as the eager loop, so the same results."""

    def __init__(self, b: int, n: int, bits: int, device: torch.device):
        z = dict(device=device, dtype=torch.float32)
        self.w1, self.u1 = torch.zeros(b, n, **z), torch.eye(b, **z)
        self.s1, self.z1 = torch.ones(b, n, **z), torch.zeros(b, n, **z)
        self.q1, self.err1 = torch.zeros(b, n, **z), torch.zeros(b, n, **z)
        self.maxq = (1 << bits) - 1
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs require
            self._body()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._body()

    def _body(self) -> None:
        _block_body(self.w1, self.u1, self.s1, self.z1, self.q1, self.err1, self.maxq)

    def __call__(self, w1, u1, s1, z1):
        self.w1.copy_(w1)
        self.u1.copy_(u1)
        self.s1.copy_(s1)
        self.z1.copy_(z1)
        self.graph.replay()
        return self.q1.clone(), self.err1.clone()


def _static_block(w1, u1, s1, z1, bits):
    b, n = w1.shape
    if w1.is_cuda and b >= 16 and USE_CUDA_GRAPHS:
        key = (b, n, bits, w1.device)
        if key not in _GRAPHS:
            if len(_GRAPHS) >= _MAX_GRAPHS:
                _GRAPHS.clear()
            _GRAPHS[key] = _GraphedBlock(b, n, bits, w1.device)
        return _GRAPHS[key](w1, u1, s1, z1)
    w1 = w1.clone()
    q1, err1 = torch.empty_like(w1), torch.empty_like(w1)
    _block_body(w1, u1, s1, z1, q1, err1, (1 << bits) - 1)
    return q1, err1


def _dynamic_block(w1, u1, scales, zeros, i1, group_size, bits, fit):
    """Like _block_body, fitting each group's grid on the updated weights when its first column comes up."""
    q1, err1 = torch.empty_like(w1), torch.empty_like(w1)
    for i in range(w1.shape[0]):
        col = i1 + i
        if col % group_size == 0:
            scale_d, zero_d = grid.fit(w1[i : i + group_size].T.unsqueeze(1), **fit)
            scale, zero = scale_d[:, 0], zero_d[:, 0]
            scales[:, col // group_size], zeros[:, col // group_size] = scale, zero
        x = w1[i]
        q = grid.round_codes(x.unsqueeze(-1), scale, zero, bits).squeeze(-1)
        q1[i] = q
        e = (x - scale * (q - zero)).div_(u1[i, i])
        err1[i] = e
        w1[i:].addr_(u1[i, i:], e, alpha=-1)
    return q1, err1


def output_error(weight: torch.Tensor, dequantized: torch.Tensor, hessian: torch.Tensor) -> float:
    """Relative output error on the calibration inputs: tr(D H D^T) / tr(W H W^T) with D = W - W_q."""
    w = weight.float()
    diff = w - dequantized.to(w.device, torch.float32)
    h = hessian.float()
    num = float(((diff @ h) * diff).sum())
    den = float(((w @ h) * w).sum())
    return num / den if den > 0 else 0.0
