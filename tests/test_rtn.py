"""Round-to-nearest: every weight within half a scale of its original unless the group's grid clipped it."""

import pytest
import torch

from conftest import grid_errors
from quantkit.methods import rtn


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("search", [False, True])
def test_dequantized_within_half_a_scale(sym, group, search):
    torch.manual_seed(group)
    w = torch.randn(48, 256) * 0.02
    w[3, 5] = 0.3  # an outlier
    ql = rtn.quantize(w, bits=4, group_size=group, sym=sym, scale_dtype=torch.bfloat16, search=search)
    err, scale, inside = grid_errors(ql, w)
    assert bool((err[inside] <= scale[inside] / 2 * (1 + 1e-5)).all())
    if not search:
        # no clipping search. Asymmetric: half a step, plus the bf16 rounding of the scale (relative 2**-8)
        # accumulated over the 15 steps to the grid's far end. Symmetric: the grid reaches 8 steps on the peak's
        # side and 7 on the other, so the far side may clip by up to one step (plus the same rounding).
        rounding = 15 * 2**-8
        bound = scale * ((1.0 if sym else 0.5) + rounding)
        assert bool((err <= bound).all())


def test_symmetric_uses_uint4b8_and_stored_scale():
    """Zero point 8 everywhere, and the codes are w rounded against the stored bf16 scale (not the fp32 scale it was
    rounded from): clamp(round(w / scale) + 8, 0, 15)."""
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    ql = rtn.quantize(w, bits=4, group_size=32, sym=True, scale_dtype=torch.bfloat16)
    assert bool((ql.zeros == 8).all()) and ql.scales.dtype == torch.bfloat16
    scale = ql.scales.float().T.unsqueeze(-1)  # [N, groups, 1]
    expected = (torch.round(w.reshape(16, 2, 32) / scale) + 8).clamp(0, 15).reshape(16, 64)
    assert torch.equal(ql.codes, expected.to(torch.uint8))


def test_search_is_no_worse_than_plain_grid():
    torch.manual_seed(0)
    w = torch.randn(64, 512) * 0.05
    for sym in (True, False):
        plain = rtn.quantize(w, bits=4, group_size=32, sym=sym, scale_dtype=torch.bfloat16, search=False)
        best = rtn.quantize(w, bits=4, group_size=32, sym=sym, scale_dtype=torch.bfloat16, search=True)
        assert ((best.dequantize() - w) ** 2).sum() < ((plain.dequantize() - w) ** 2).sum()


def test_dead_group_has_finite_scale():
    w = torch.zeros(8, 64)
    ql = rtn.quantize(w, bits=4, group_size=32, sym=True, scale_dtype=torch.bfloat16)
    assert torch.isfinite(ql.scales.float()).all() and bool((ql.dequantize() == 0).all())


def test_group_must_divide_k():
    with pytest.raises(ValueError, match="does not divide"):
        rtn.quantize(torch.randn(8, 96), bits=4, group_size=64, sym=True, scale_dtype=torch.bfloat16)
