"""How the L2 prefetch cuts its ranges among threads, on the CPU (skipped without nvcc): tests/prefetch_slices_check.cu
runs csrc/w4a16_prefetch.h's qk_prefetch_each_slice for every thread of the grids the prefetch kernel and the decode
kernel use, over the byte ranges a layer's scales and weights give (and odd ones), and checks that every 16-byte unit
is requested exactly once, in slices inside their ranges."""

from __future__ import annotations

import host_check
import pytest

SLICE = 16384


def _cases() -> list[tuple[int, ...]]:
    """(threads, bytes...): the scales and weights of 4-bit layers (the packed scales are 2 bytes a row a group, the
    weights half a byte a weight), whole or cut to a multiple of 16, over the prefetch kernel's grid (up to 64 blocks
    of 128 threads) and the decode kernel's (32 lanes a block, hundreds to thousands of blocks)."""
    ranges = []
    for n, k, g in ((4096, 4096, 128), (6144, 4096, 128), (28672, 4096, 32), (4096, 14336, 128), (1040, 1024, 64)):
        meta, w = n * (k // g) * 2, n * k // 2
        ranges += [(meta, w), (meta, min(w, 24 << 20)), (meta, 100_000), (meta, 0)]
    ranges += [(16,), (SLICE,), (SLICE + 16,), (16, 16, 16, 16), (0, SLICE * 3 - 16, 48, 5 * SLICE)]
    cases = []
    for rng in ranges:
        slices = sum(-(-b // SLICE) for b in rng)
        for threads in (1, 7, 128, min(64, -(-slices // 128)) * 128, 256 * 32, 1792 * 32, slices, slices + 1):
            cases.append((max(1, threads), *rng))
    return cases


@pytest.mark.skipif(host_check.NVCC is None, reason="nvcc not installed")
def test_prefetch_requests_every_byte_once(tmp_path):
    host_check.run("prefetch_slices_check.cu", [f"{c[0]} {len(c) - 1} {' '.join(map(str, c[1:]))}" for c in _cases()],
                   tmp_path)
