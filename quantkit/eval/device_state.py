"""What the eval's own Triton kernels share: where they run, and the buffers they keep zero between launches
(quantkit.eval.decode_attention's arrival counters, quantkit.eval.greedy's keys and counters)."""

from __future__ import annotations

import os

import torch


def runs_on(device: torch.device) -> bool:
    """Whether the Triton kernels run on device: a GPU, or anywhere under Triton's interpreter (TRITON_INTERPRET=1,
    which the CPU tests use)."""
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def kept_zeros(store: dict, retired: list, device: torch.device, n: int, dtype: torch.dtype, least: int,
               what: str) -> torch.Tensor:
    """At least n zeros of dtype on device, which the kernels using them leave zero: one tensor a device in store,
    shared by every call (one call at a time: calls on one stream, each kernel waiting for the one before), at least
    ``least`` long, grown only (to twice its size at least; the old one kept in retired, since a captured CUDA graph
    may still replay into it) and never inside a graph capture (the first call of a shape allocates it, as a
    throughput run's warm-up does outside its graphs); what names it in the error."""
    have = store.get(device)
    if have is None or have.numel() < n:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"{what}: {n} asked for in a CUDA graph capture, {0 if have is None else have.numel()} "
                               "allocated; run the step once before capturing")
        if have is not None:
            retired.append(have)
        have = torch.zeros(max(n, least, 0 if have is None else 2 * have.numel()), dtype=dtype, device=device)
        store[device] = have
    return have
