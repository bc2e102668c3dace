"""GPTQ on a CUDA device: the CUDA-graph column loop gives exactly the eager loop's codes (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from quantkit.methods import gptq_solver
from quantkit.methods.gptq_solver import solve

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_graphed_columns_equal_eager(monkeypatch):
    """The static-group solve captures its block loop as a CUDA graph (checked on a cache emptied for this test,
    since the cache is process-wide: one graph for blocks of 128 columns by n outputs) and gives exactly the eager
    loop's codes, run after run."""
    monkeypatch.setattr(gptq_solver, "_GRAPHS", {})
    g = torch.Generator().manual_seed(0)
    k, n = 256, 96
    x = torch.randn(4096, k, generator=g) * torch.linspace(0.2, 3, k)
    h = (x.T @ x / 4096).cuda()
    w = (torch.randn(n, k, generator=g) * 0.05).cuda()
    kw = dict(bits=4, group_size=32, sym=True, scale_dtype=torch.bfloat16, act_order=True, static_groups=True)
    graphed = solve(w, h, **kw).qlinear
    assert set(gptq_solver._GRAPHS) == {(128, n, 4, w.device)}, "the static-group path should have used a CUDA graph"
    gptq_solver.USE_CUDA_GRAPHS = False
    try:
        eager = solve(w, h, **kw).qlinear
    finally:
        gptq_solver.USE_CUDA_GRAPHS = True
    assert torch.equal(eager.codes, graphed.codes) and torch.equal(eager.scales, graphed.scales)
    again = solve(w, h, **kw).qlinear
    assert torch.equal(again.codes, graphed.codes)  # deterministic on the device
