"""Warming the L2 cache with the next quantized linear's weights in a throughput run's steps
(kernels.ops.l2_prefetch).

At small batch a decode step's DRAM idles while the kernels between two linears run: rotary embedding, cache writes
and above all the attention, which at batch 1 reads about a megabyte a layer and is bound by latency. A 4-bit layer
is small enough to sit in the L2 (Llama-3-8B's o_proj: 8.7 MB of the H200's 50), so the linear before such a
stretch can request the next linear's weights as soon as its own kernel is launched; the copies run in the idle
time, and the next linear reads from the L2. Nothing changes in the arithmetic (the kernels read the same bytes).

The step's quantized linears are taken in module order, which is the order a decoder block runs them in
(q/k/v, o, gate/up, down, then the next block). Modes (QUANTKIT_L2_PREFETCH):
  off        nothing is prefetched;
  attention  the last linear before an attention warms the first one after it (the input projection of a module
             whose class name ends in "Attention" warms its output projection), the longest idle stretch;
  next       every linear warms the one after it.
A linear's weights are requested up to MAX_BYTES (QUANTKIT_L2_PREFETCH_MB), where its M (tokens) is at most MAX_M
(QUANTKIT_L2_PREFETCH_MAX_M): at large M the kernels are no longer bound by reading their weights. The requests go
out from the decode kernel's own blocks as they finish (kernels.ops.L2_PREFETCH_IN_KERNEL), else, and on the other
kernels, by a launch of their own after the linear's kernel. With EVICT_FIRST (QUANTKIT_L2_PREFETCH_EVICT_FIRST=1), a
decode kernel that requests the next layer reads its own weights with an L2 evict-first policy
(kernels.ops.L2_PREFETCH_EVICT_FIRST), so that the rest of its stream does not push the requested lines out first.

Measured on the H200 (docs/kernel.md item 43), every mode makes the decode step slower, hence the default off: a
kernel that issues the requests lasts until they have landed, so they are paid in line rather than in idle time, and
with its weights already in the L2 a layer's kernel is at most 1.09x faster.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from torch import nn

from quantkit.errors import InputError
from quantkit.kernels import ops
from quantkit.kernels.module import W4A16Linear

MODES = ("off", "attention", "next")
MODE = os.environ.get("QUANTKIT_L2_PREFETCH", "off")
MAX_BYTES = int(float(os.environ.get("QUANTKIT_L2_PREFETCH_MB", "24")) * 2**20)
MAX_M = int(os.environ.get("QUANTKIT_L2_PREFETCH_MAX_M", "32"))
EVICT_FIRST = os.environ.get("QUANTKIT_L2_PREFETCH_EVICT_FIRST", "0") != "0"


def settings() -> dict:
    """What a throughput run records (in_kernel, evict_first: kernels.ops.L2_PREFETCH_IN_KERNEL and
    L2_PREFETCH_EVICT_FIRST as they stand, which warmed() sets)."""
    return {"mode": MODE, "max_bytes": MAX_BYTES, "max_m": MAX_M, "in_kernel": ops.L2_PREFETCH_IN_KERNEL,
            "evict_first": ops.L2_PREFETCH_EVICT_FIRST}


def describe(recorded: dict | None) -> str:
    """A run's recorded settings (settings(), in the eval JSON or a profile row) as a result table names them; ""
    where nothing was prefetched."""
    if not recorded or recorded["mode"] == "off":
        return ""
    how = "from the decode kernel" if recorded.get("in_kernel") else "its own launches"
    if recorded.get("in_kernel") and recorded.get("evict_first"):
        how += ", its own weights evict-first"
    return f"L2 prefetch of the next linear ({recorded['mode']}, {how})"


def _linears(model: nn.Module) -> list[tuple[str, W4A16Linear]]:
    """The model's W4A16 linears that run our kernels, in module order (each once)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, W4A16Linear) and m.backend in ("auto", "kernel")]


def _across_attention(model: nn.Module, a: str, b: str) -> bool:
    """Whether the closest module holding both a and b is an attention module."""
    common = os.path.commonprefix([a.split("."), b.split(".")])
    return type(model.get_submodule(".".join(common))).__name__.endswith("Attention") if common else False


def plan(model: nn.Module, mode: str | None = None) -> list[tuple[str, str]]:
    """(the linear that requests, the linear whose weights it requests), by module name, for ``mode``
    (default MODE)."""
    mode = MODE if mode is None else mode
    if mode not in MODES:
        raise InputError(f"L2 prefetch mode (QUANTKIT_L2_PREFETCH) must be one of {', '.join(MODES)}, got {mode!r}")
    names = [name for name, _ in _linears(model)]
    pairs = list(zip(names, names[1:]))
    if mode == "off":
        return []
    if mode == "attention":
        return [(a, b) for a, b in pairs if _across_attention(model, a, b)]
    return pairs


@contextmanager
def warmed(model: nn.Module, mode: str | None = None, *, max_bytes: int | None = None, max_m: int | None = None,
           evict_first: bool | None = None):
    """Within the block, the linears of ``plan(model, mode)`` request their successors' weights into the L2 after
    their own kernels (W4A16Linear.warm), and kernels.ops.L2_PREFETCH_EVICT_FIRST is ``evict_first`` (default
    EVICT_FIRST); yields the plan. Restored afterwards."""
    pairs = plan(model, mode)
    modules = dict(_linears(model))
    limit = MAX_BYTES if max_bytes is None else max_bytes
    rows = MAX_M if max_m is None else max_m
    before = {name: m.warm for name, m in modules.items()}
    evict_before = ops.L2_PREFETCH_EVICT_FIRST
    try:
        ops.L2_PREFETCH_EVICT_FIRST = EVICT_FIRST if evict_first is None else evict_first
        for a, b in pairs:
            modules[a].warm = (modules[b].packed, limit, rows)
        yield pairs
    finally:
        ops.L2_PREFETCH_EVICT_FIRST = evict_before
        for name, m in modules.items():
            m.warm = before[name]
