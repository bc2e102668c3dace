"""The warp-specialized kernel's stream-K walk on the CPU (skipped without nvcc): tests/ws_walk_check.cu walks every
block's items exactly as the kernel does (csrc/w4a16_wgmma_ws_cuda.h, qk_ws_sk_item) for every case that
quantkit.kernels.ops.ws_stream_k gives over a grid of shapes, tiles and multiprocessor counts, and checks that each
chunk of each tile is computed once and that a tile's parts are numbered 0 .. nz - 1 within the workspace's depth."""

from __future__ import annotations

import itertools

import host_check
import pytest

from quantkit.kernels import ops


def _cases() -> list[tuple[int, ...]]:
    cases = set()
    for n, k, m, bt, sms in itertools.product((128, 1168, 4096, 14336, 28672), (64, 448, 2048, 28672),
                                              (1, 64, 65, 200, 512, 2048), (16, 32, 64, 128, 256), (132, 78)):
        for force in (False, True):
            ctas, blocks = ops.ws_stream_k(m, n, k, sms, bt, force=force)
            if ctas:
                cases.add((m, n, k, bt, ops.WS_KS[bt], ctas, blocks))
    return sorted(cases)


def test_cases_cover_both_kinds_of_walk():
    cases = _cases()
    assert len(cases) > 300
    assert any(blocks < ctas for *_, ctas, blocks in cases)  # whole waves, then the rest among fewer blocks
    assert any(ctas < 132 for *_, ctas, _ in cases)  # fewer tiles than multiprocessors


@pytest.mark.skipif(host_check.NVCC is None, reason="nvcc not installed")
def test_stream_k_walk_computes_every_chunk_once(tmp_path):
    host_check.run("ws_walk_check.cu", [" ".join(map(str, c)) for c in _cases()], tmp_path,
                   ("-gencode=arch=compute_90a,code=sm_90a",))
