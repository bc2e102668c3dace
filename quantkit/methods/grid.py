"""The 4-bit grid of one group: choosing scale and zero, and rounding weights onto it.

Symmetric (uint4b8): zero = 2**(bits-1), q in [0, 2**bits - 1], w ~ scale * (q - zero). The base scale is
llama.cpp's choice, d = (signed value of largest magnitude) / -zero, which puts that value exactly on q = 0
and uses the whole range [-8, 7]; a small search over multiples of d (and of absmax / (zero - 1)) keeps the
one with the least squared error per group, with the scale rounded to its storage dtype *before* codes are
chosen, so the stored scale is the one that was searched.

Asymmetric: scale = (hi - lo) / (2**bits - 1) and zero = round(-lo / scale) over a shrinking clip range
[t*lo, t*hi], least squared error wins. Zero points are kept >= ``min_zero`` (1 for GPTQ format v1, which
stores zero - 1 in a nibble and cannot hold -1).

All functions work on a batch of groups: ``w`` is [..., group] (fp32), results are [...].
"""

from __future__ import annotations

import torch

SYM_RATIOS = (1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82)
CLIP_RATIOS = (1.0, 0.96, 0.92, 0.88, 0.84, 0.80, 0.76)


def round_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Nearest codes for w given per-group scale and zero (broadcast over the last dim)."""
    q = torch.round(w / scale.unsqueeze(-1)) + zero.unsqueeze(-1)
    return q.clamp_(0, (1 << bits) - 1)


def _error(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Squared error of each group, computed in units of its scale: scale**2 * sum((q - zero) - w / scale)**2."""
    x = w / scale.unsqueeze(-1)
    r = torch.round(x).add_(zero.unsqueeze(-1)).clamp_(0, (1 << bits) - 1).sub_(zero.unsqueeze(-1)).sub_(x)
    return r.square_().sum(-1).mul_(scale.square())


def _stored(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The scale as it will be stored, back in fp32; never zero (dead groups get the smallest normal)."""
    s = scale.to(dtype).float()
    tiny = torch.finfo(dtype).tiny
    return torch.where(s.abs() < tiny, torch.full_like(s, tiny), s)


def fit_symmetric(w: torch.Tensor, *, bits: int, scale_dtype: torch.dtype, search: bool = True):
    """(scale, zero) for each group of w [..., group]; zero is 2**(bits-1) everywhere."""
    zero_value = 1 << (bits - 1)
    idx = w.abs().argmax(dim=-1, keepdim=True)
    peak = w.gather(-1, idx).squeeze(-1)  # signed value of largest magnitude
    zero = torch.full_like(peak, float(zero_value))
    bases = [peak / -zero_value]
    if search:
        bases.append(peak.abs() / (zero_value - 1))
    best_scale = _stored(bases[0], scale_dtype)
    if not search:
        return best_scale, zero
    best_err = _error(w, best_scale, zero, bits)
    for base in bases:
        for ratio in SYM_RATIOS:
            scale = _stored(base * ratio, scale_dtype)
            err = _error(w, scale, zero, bits)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale = torch.where(better, scale, best_scale)
    return best_scale, zero


def fit_asymmetric(w: torch.Tensor, *, bits: int, scale_dtype: torch.dtype, min_zero: int = 1, search: bool = True):
    """(scale, zero) for each group of w [..., group], zero an integer in [min_zero, 2**bits - 1]."""
    qmax = (1 << bits) - 1
    lo = w.amin(dim=-1).clamp(max=0)
    hi = w.amax(dim=-1).clamp(min=0)
    best_scale = best_zero = best_err = None
    for ratio in CLIP_RATIOS if search else (1.0,):
        scale = _stored((hi - lo) * ratio / qmax, scale_dtype)
        zero = torch.round(-lo * ratio / scale).clamp(min_zero, qmax)
        err = _error(w, scale, zero, bits)
        if best_err is None:
            best_scale, best_zero, best_err = scale, zero, err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def fit(w: torch.Tensor, *, bits: int, sym: bool, scale_dtype: torch.dtype, min_zero: int = 1, search: bool = True):
    if sym:
        return fit_symmetric(w, bits=bits, scale_dtype=scale_dtype, search=search)
    return fit_asymmetric(w, bits=bits, scale_dtype=scale_dtype, min_zero=min_zero, search=search)
