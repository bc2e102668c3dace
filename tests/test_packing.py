"""GPTQ packing against an independent, slow, loop-by-loop unpacker written from formats.md §1."""

import pytest
import torch

from quantkit.formats import gptq
from quantkit.qlinear import QuantizedLinear


def slow_unpack_qweight(qweight: torch.Tensor) -> list[list[int]]:
    """q[n][k] from qweight[i, n] = sum_j q[n, 8i+j] << 4j, one nibble at a time."""
    rows, n_cols = qweight.shape
    q = [[0] * (rows * 8) for _ in range(n_cols)]
    for i in range(rows):
        for n in range(n_cols):
            word = int(qweight[i, n]) & 0xFFFFFFFF
            for j in range(8):
                q[n][8 * i + j] = (word >> (4 * j)) & 0xF
    return q


def slow_unpack_qzeros(qzeros: torch.Tensor, n_cols: int) -> list[list[int]]:
    groups, words = qzeros.shape
    z = [[0] * n_cols for _ in range(groups)]
    for g in range(groups):
        for i in range(words):
            word = int(qzeros[g, i]) & 0xFFFFFFFF
            for j in range(8):
                if 8 * i + j < n_cols:
                    z[g][8 * i + j] = (word >> (4 * j)) & 0xF
    return z


def random_linear(n, k, group, sym, seed=0, zero_min=1):
    g = torch.Generator().manual_seed(seed)
    groups = k // group
    zeros = torch.full((groups, n), 8, dtype=torch.uint8) if sym else torch.randint(zero_min, 16, (groups, n), generator=g).to(torch.uint8)
    return QuantizedLinear(
        codes=torch.randint(0, 16, (n, k), generator=g).to(torch.uint8),
        scales=torch.rand(groups, n, generator=g).to(torch.bfloat16),
        zeros=zeros,
        g_idx=torch.arange(k, dtype=torch.int32) // group,
        bits=4, group_size=group, sym=sym,
    )


@pytest.mark.parametrize("n,k,group,sym", [(24, 64, 32, True), (40, 128, 64, False), (12, 256, 128, False)])
@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_pack_matches_slow_unpacker(n, k, group, sym, fmt):
    ql = random_linear(n, k, group, sym)
    t = gptq.pack(ql, checkpoint_format=fmt)
    assert t["qweight"].dtype == torch.int32 and tuple(t["qweight"].shape) == (k // 8, n)
    assert tuple(t["qzeros"].shape) == (k // group, (n + 7) // 8)
    assert tuple(t["scales"].shape) == (k // group, n) and t["g_idx"].dtype == torch.int32
    assert slow_unpack_qweight(t["qweight"]) == ql.codes.tolist()
    stored = slow_unpack_qzeros(t["qzeros"], n)
    offset = 1 if fmt == "gptq" else 0
    assert [[v + offset for v in row] for row in stored] == ql.zeros.tolist()


def test_symmetric_v1_zeros_are_all_sevens():
    t = gptq.pack(random_linear(16, 64, 32, True), checkpoint_format="gptq")
    assert all((int(w) & 0xFFFFFFFF) == 0x77777777 for w in t["qzeros"].flatten())


def test_roundtrip_through_unpack():
    ql = random_linear(40, 128, 32, False, seed=3)
    t = gptq.pack(ql)
    back = gptq.unpack(t.__getitem__, bits=4, group_size=32, sym=False)
    assert torch.equal(back.codes, ql.codes) and torch.equal(back.zeros, ql.zeros)
    assert torch.equal(back.dequantize(), ql.dequantize())


def test_v1_refuses_zero_point_zero():
    ql = random_linear(8, 32, 32, False, zero_min=0, seed=1)
    ql.zeros[0, 0] = 0
    with pytest.raises(ValueError, match="zero - 1"):
        gptq.pack(ql, checkpoint_format="gptq")
    gptq.pack(ql, checkpoint_format="gptq_v2")  # v2 stores the true zero
