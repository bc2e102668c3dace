"""Small modules that the eval's CPU and GPU tests (tests/test_eval.py, tests/test_eval_gpu.py) compile."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantkit.kernels import W4A16Linear


class SiluDown(torch.nn.Module):
    """down(silu(x) * x) over one W4A16Linear: the end of a gated MLP, whose activation a compiled step fuses with
    what comes after it."""

    def __init__(self, packed):
        super().__init__()
        self.down = W4A16Linear(packed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(x) * x)
