"""CPU tests of quantkit.kernels: the repacked layouts (decoded by emulating the kernels' fragment maps), the
reference path, dispatch without a GPU, and the module. GPU sweeps are in test_kernels_gpu.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from quantkit.errors import InputError, UnsupportedError
from quantkit.formats import gptq
from quantkit.kernels import (
    W4A16Linear, kernel_available, prepare, prepare_from_checkpoint, reference_weight, w4a16_linear,
)
from quantkit.kernels import build, testing
from quantkit.kernels.packing import MAGIC_BIAS


def _layer(n=48, k=256, g=32, sym=True, act=False, dtype=torch.bfloat16, seed=0):
    return testing.random_qlinear(n, k, group_size=g, sym=sym, act_order=act, dtype=dtype, seed=seed)


def _to_dtype_bits(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return v.to(dtype).float()


def mma_a_tile(packed, dtype: torch.dtype, t: int, c: int, j: int) -> torch.Tensor:
    """The 16x16 A operand (rows n, k slots) that tile t's lanes hold for k16 step j of chunk c, decoded lane by
    lane with the PTX m16n8k16 fragment map, in the kernels' dequantization arithmetic."""
    w, meta = packed.mma_weight.to(torch.int64) & 0xFFFFFFFF, packed.mma_meta(dtype).float()
    magic = MAGIC_BIAS[dtype]
    a = torch.zeros(16, 16, dtype=torch.float64)
    for lane in range(32):
        gid, tig = divmod(lane, 4)
        word, grp = int(w[t, c, lane, j]), (64 * c + 16 * tig) // packed.group_size
        for i in range(4):
            rh, h = i & 1, i >> 1
            s = meta[t, grp, gid, rh]
            zc = meta[t, grp, gid, 2 + rh] if meta.shape[-1] == 4 else magic + 8
            for e in range(2):
                q = (word >> (4 * i + 16 * e)) & 0xF
                a[gid + 8 * rh, 2 * tig + 8 * h + e] = _to_dtype_bits(((magic + q) - zc) * s, dtype)  # a{2i,2i+1}
    return a


def emulate_mma(x: torch.Tensor, packed, dtype: torch.dtype) -> torch.Tensor:
    """The mma.sync kernels' arithmetic (fp64 sums): B fragments read x at the layout's permuted k."""
    tiles, chunks = packed.mma_weight.shape[:2]
    m = x.shape[0]
    out = torch.zeros(m, tiles * 16, dtype=torch.float64)
    for t in range(tiles):
        for c in range(chunks):
            for j in range(4):
                b = torch.zeros(16, m, dtype=torch.float64)  # k slots x tokens
                for tig in range(4):  # B regs: rows 2tig+e and 2tig+8+e, column gid (a token)
                    for e in range(2):
                        b[2 * tig + e] = x[:, 64 * c + 16 * tig + 4 * j + e].double()
                        b[2 * tig + 8 + e] = x[:, 64 * c + 16 * tig + 4 * j + 2 + e].double()
                out[:, 16 * t : 16 * t + 16] += (mma_a_tile(packed, dtype, t, c, j) @ b).T
    return out


def emulate_wgmma(x: torch.Tensor, packed, dtype: torch.dtype) -> torch.Tensor:
    """The wgmma kernel's arithmetic: the same A fragments, B read in plain k order from x gathered by
    packed.wgmma_x_index() (k16 step j of chunk c is logical k 64c + 16j .. + 15)."""
    xw = x[:, packed.wgmma_x_index()].double()
    tiles, chunks = packed.mma_weight.shape[:2]
    out = torch.zeros(x.shape[0], tiles * 16, dtype=torch.float64)
    for t in range(tiles):
        for c in range(chunks):
            for j in range(4):
                b = xw[:, 64 * c + 16 * j : 64 * c + 16 * j + 16].T
                out[:, 16 * t : 16 * t + 16] += (mma_a_tile(packed, dtype, t, c, j) @ b).T
    return out


def decode_dot2(qweight: torch.Tensor) -> torch.Tensor:
    """Shuffled qweight [K/8, N] -> codes [N, K] by the kernel's rule: (w >> 4p) & 0x000F000F = (k 2p, 2p+1)."""
    w = qweight.to(torch.int64) & 0xFFFFFFFF
    rows = []
    for p in range(4):
        rows += [(w >> (4 * p)) & 0xF, (w >> (16 + 4 * p)) & 0xF]
    return torch.stack(rows, dim=1).reshape(-1, w.shape[1]).T.to(torch.uint8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("g,sym,act", [(32, True, False), (64, False, True), (128, False, False), (32, False, True)])
def test_mma_layout_emulated_matches_reference(dtype, g, sym, act):
    ql = _layer(n=32, k=256, g=g, sym=sym, act=act, dtype=dtype, seed=g)
    packed = prepare(ql, device="cpu", layouts=("mma",))
    x = testing.random_activations(3, 256, dtype=dtype, seed=1, device="cpu")
    xp = x[:, packed.perm] if packed.perm is not None else x
    got = emulate_mma(xp, packed, dtype)
    assert testing.relative_error(got, reference_weight(packed, dtype), x) < 1e-6


@pytest.mark.parametrize("g,sym,act", [(32, True, False), (64, False, True), (128, True, True)])
def test_wgmma_x_order_matches_the_mma_fragments(g, sym, act):
    dtype = torch.bfloat16
    ql = _layer(n=32, k=256, g=g, sym=sym, act=act, dtype=dtype, seed=g + 1)
    packed = prepare(ql, device="cpu", layouts=("mma",))
    x = testing.random_activations(3, 256, dtype=dtype, seed=2, device="cpu")
    got = emulate_wgmma(x, packed, dtype)
    assert testing.relative_error(got, reference_weight(packed, dtype), x) < 1e-6
    if act:  # the index must carry the act-order sort: without it the product is wrong
        plain = torch.arange(256).reshape(4, 4, 4, 2, 2).permute(0, 2, 3, 1, 4).reshape(256)
        packed._per_dtype["wgmma_index"] = plain
        assert testing.relative_error(emulate_wgmma(x, packed, dtype), reference_weight(packed, dtype), x) > 0.1


def wgmma_pack_x_image(x: torch.Tensor, packed) -> torch.Tensor:
    """What the extension's wgmma_pack_x writes, in torch: [K / 64][M][64], row r of chunk c the chunk of x gathered by
    packed.wgmma_x_index() with its 16-byte unit u at u ^ (r % 8)."""
    m, k = x.shape
    xw = x[:, packed.wgmma_x_index()].reshape(m, k // 64, 8, 8)
    r = torch.arange(m, device=x.device)[:, None]
    v = torch.arange(8, device=x.device)[None, :] ^ (r % 8)  # [M, 8]: the logical unit stored at unit v
    image = torch.gather(xw, 2, v[:, None, :, None].expand(m, k // 64, 8, 8))
    return image.permute(1, 0, 2, 3).reshape(m, k)


@pytest.mark.parametrize("act", [False, True])
def test_wgmma_x_pack_index_spells_the_x_order(act):
    ql = _layer(n=32, k=256, g=64, sym=True, act=act, dtype=torch.bfloat16, seed=5)
    packed = prepare(ql, device="cpu", layouts=("mma",))
    index, words = packed.wgmma_x_pack_index()
    assert index.dtype == torch.int32 and words is not act  # an act-order sort splits the pairs of k
    order = torch.stack([2 * index, 2 * index + 1], 1).reshape(-1) if words else index
    assert torch.equal(order.long(), packed.wgmma_x_index())
    x = testing.random_activations(11, 256, dtype=torch.bfloat16, seed=3, device="cpu")
    image = wgmma_pack_x_image(x, packed).reshape(4, 11, 64)  # the helper the GPU test holds the kernel to
    xw = x[:, packed.wgmma_x_index()]
    for c, r, v in ((2, 9, 3), (0, 0, 5), (3, 10, 7)):  # unit v of row r of chunk c: logical unit v ^ (r % 8)
        u = v ^ (r % 8)
        assert torch.equal(image[c, r, 8 * v : 8 * v + 8], xw[r, 64 * c + 8 * u : 64 * c + 8 * u + 8])


def test_x_image_is_the_packing_of_x():
    """ops.x_image, the packing of x in torch ops (what a compiled decode step fuses into the kernel that makes x),
    writes the bytes of the extension's packing without act-order (wgmma_pack_x_image, which the GPU test holds that
    kernel to), [K / 64, M, 64], for any leading dimensions of x and M not a multiple of 8; inductor's kernel for it
    (on the CPU here) gives the same bits; the op that reads it refuses other shapes and layers it cannot run."""
    from quantkit.kernels import ops

    packed = prepare(_layer(n=32, k=256, g=64), device="cpu", layouts=("mma",))
    compiled = torch.compile(ops.x_image, dynamic=True)
    for lead in ((11,), (3, 1), (2, 8)):
        x = testing.random_activations(int(torch.tensor(lead).prod()), 256, dtype=torch.bfloat16, seed=4,
                                       device="cpu").reshape(*lead, 256)
        want = wgmma_pack_x_image(x.reshape(-1, 256), packed).reshape(4, -1, 64)
        assert torch.equal(ops.x_image(x), want)
        assert torch.equal(compiled(x), want)
    assert not ops.x_image_ready(packed)  # on the CPU
    with pytest.raises(InputError, match=r"\[K / 64, M, 64\]"):
        ops.w4a16_linear_image(x.reshape(-1, 256), packed)
    with pytest.raises(UnsupportedError, match="Hopper GPU"):
        ops.w4a16_linear_image(want, packed)


def test_dot2_layout_is_the_exllama_shuffle():
    ql = _layer(n=32, k=128, g=32, act=True)
    packed = prepare(ql, device="cpu", layouts=("dot2",))
    assert torch.equal(decode_dot2(packed.dot2_qweight), ql.codes[:, packed.perm])
    # the word order of formats.md §2: q7 q5 q3 q1 q6 q4 q2 q0 (most significant first)
    word = int(packed.dot2_qweight[0, 0]) & 0xFFFFFFFF
    q = [int(ql.codes[0, int(packed.perm[i])]) for i in range(8)]
    expect = sum(v << (4 * pos) for pos, v in enumerate([q[0], q[2], q[4], q[6], q[1], q[3], q[5], q[7]]))
    assert word == expect


def test_act_order_perm_sorts_groups():
    ql = _layer(k=256, g=64, act=True)
    packed = prepare(ql, device="cpu")
    assert torch.equal(ql.g_idx.long()[packed.perm], torch.arange(256) // 64)


def test_uneven_act_order_groups_go_to_reference():
    ql = _layer(k=128, g=32)
    g_idx = ql.g_idx.clone()
    g_idx[0], g_idx[-1] = 3, 3  # group 0 loses a member, group 3 gains one
    bad = type(ql)(codes=ql.codes, scales=ql.scales, zeros=ql.zeros, g_idx=g_idx, bits=4, group_size=32, sym=True)
    packed = prepare(bad, device="cpu")
    assert "group_size inputs" in packed.kernel_reason
    x = testing.random_activations(2, 128, dtype=torch.bfloat16, seed=0, device="cpu")
    y = w4a16_linear(x, packed)
    assert testing.relative_error(y, bad.dequantize(torch.bfloat16), x) < testing.TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_prepare_from_checkpoint_reuses_gptq_unpack(fmt):
    ql = _layer(n=32, k=128, g=32, sym=False, act=True, dtype=torch.float16, seed=3)
    t = gptq.pack(ql, checkpoint_format=fmt)
    packed = prepare_from_checkpoint(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], bits=4, group_size=32,
                                     sym=False, checkpoint_format=fmt, device="cpu", layouts=("mma", "dot2"))
    assert torch.equal(reference_weight(packed, torch.float16), ql.dequantize(torch.float16))
    direct = prepare(ql, device="cpu", layouts=("mma", "dot2"))
    assert torch.equal(packed.mma_weight, direct.mma_weight)
    assert torch.equal(packed.dot2_qweight, direct.dot2_qweight)


def test_reference_path_shapes_bias_and_leading_dims():
    ql = _layer(n=48, k=256, dtype=torch.bfloat16)
    packed = prepare(ql, device="cpu")
    x = testing.random_activations(6, 256, dtype=torch.bfloat16, seed=0, device="cpu").reshape(2, 3, 256)
    bias = torch.randn(48).to(torch.bfloat16)
    y = w4a16_linear(x, packed, bias, backend="reference")
    assert y.shape == (2, 3, 48) and y.dtype == torch.bfloat16
    err = testing.relative_error(y.reshape(6, 48), ql.dequantize(torch.bfloat16), x.reshape(6, 256), bias)
    assert err < testing.TOLERANCE[torch.bfloat16]


def test_no_gpu_means_reference_and_a_clear_reason():
    ok, reason = kernel_available()
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert not ok and "reference" in reason
    packed = prepare(_layer(), device="cpu")
    x = testing.random_activations(2, 256, dtype=torch.bfloat16, seed=0, device="cpu")
    assert torch.equal(w4a16_linear(x, packed, backend="auto"), w4a16_linear(x, packed, backend="reference"))
    with pytest.raises(UnsupportedError, match="no W4A16 kernel"):
        w4a16_linear(x, packed, backend="kernel")
    with pytest.raises(UnsupportedError, match="cannot run"):
        w4a16_linear(x, packed, backend="mma")


def test_an_install_without_the_kernel_sources_says_so(monkeypatch, tmp_path):
    """A GPU but no kernel sources (an install that lost quantkit/_csrc): a one-line reason that names the missing file
    and what to do, and the reference path, rather than an exception from the build's hashing of its sources."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "kernel sources" not in build._why_not()
    monkeypatch.setattr(build, "CSRC", tmp_path)
    reason = build._why_not()
    assert "w4a16_ext.cu missing" in reason and "pip install -e ." in reason and "\n" not in reason


def test_bad_inputs_raise_one_line_errors():
    packed = prepare(_layer(), device="cpu")
    with pytest.raises(InputError, match="float16 or bfloat16"):
        w4a16_linear(torch.zeros(1, 256), packed)
    with pytest.raises(InputError, match="256"):
        w4a16_linear(torch.zeros(1, 100, dtype=torch.bfloat16), packed)
    with pytest.raises(InputError, match="backend"):
        w4a16_linear(torch.zeros(1, 256, dtype=torch.bfloat16), packed, backend="fast")


def test_module_forward_matches_reference():
    ql = _layer(n=32, k=128, g=64, sym=False, dtype=torch.float16)
    bias = torch.randn(32).to(torch.float16)
    ql = type(ql)(**{**ql.__dict__, "bias": bias})
    layer = W4A16Linear.from_quantized(ql, device="cpu")
    x = testing.random_activations(4, 128, dtype=torch.float16, seed=0, device="cpu")
    assert torch.equal(layer(x), w4a16_linear(x, layer.packed, bias, backend="reference"))
    assert "group_size=64" in repr(layer)


def test_concatenated_layers_compute_each_part():
    """packing.concat (q/k/v or gate/up as one layer): every layout, the reference path and the module with a bias
    give the parts' outputs one after the other; layers of different act-order permutations are refused."""
    from quantkit.kernels import W4A16Linear
    from quantkit.kernels.packing import concat

    parts = [_layer(n=n, k=256, g=64, sym=s, act=True, seed=5) for n, s in ((48, True), (16, False), (32, True))]
    parts = [type(p)(**{**p.__dict__, "g_idx": parts[0].g_idx}) for p in parts]  # one input: one permutation
    packed = [prepare(p, device="cpu", layouts=("mma", "dot2")) for p in parts]
    fused = concat(packed)
    assert fused.out_features == 96 and fused.zeros is not None and torch.equal(fused.perm, packed[0].perm)
    assert torch.equal(fused.mma_weight, torch.cat([p.mma_weight for p in packed]))
    assert torch.equal(fused.dot2_qweight, torch.cat([p.dot2_qweight for p in packed], dim=1))
    assert torch.equal(fused.mma_meta(torch.bfloat16)[:3, ..., :2], packed[0].mma_meta(torch.bfloat16))  # scales
    assert torch.equal(fused.zeros[:, :48], torch.full((4, 48), 8, dtype=torch.uint8))  # a symmetric part's zeros
    x = testing.random_activations(3, 256, dtype=torch.bfloat16, seed=6, device="cpu")
    want = torch.cat([w4a16_linear(x, p, backend="reference") for p in packed], dim=-1)
    assert torch.equal(w4a16_linear(x, fused, backend="reference"), want)
    bias = [None, torch.randn(16).to(torch.bfloat16), None]
    mods = [W4A16Linear(p, b, backend="reference") for p, b in zip(packed, bias)]
    y = W4A16Linear.concat(mods)(x)
    assert torch.equal(y, torch.cat([m(x) for m in mods], dim=-1))
    other = prepare(_layer(n=16, k=256, g=64, act=True, seed=7), device="cpu")
    with pytest.raises(InputError, match="act-order permutation"):
        concat([packed[0], other])


@pytest.mark.parametrize("sym,act", [(True, False), (False, True)])
def test_rows_reordered_in_every_layout(sym, act):
    """packing.permute_rows: unpack_mma inverts repack_mma, and the reordered layer's layouts (mma, dot2, the scales,
    zeros and GPTQ tensors the reference reads) are the original's rows in the new order."""
    from quantkit.kernels.packing import permute_rows, repack_mma, unpack_mma

    ql = _layer(n=64, k=256, g=64, sym=sym, act=act, seed=11)
    packed = prepare(ql, device="cpu", layouts=("mma", "dot2"))
    codes = torch.randint(0, 16, (48, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(unpack_mma(repack_mma(codes)), codes)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    moved = permute_rows(packed, order)
    assert torch.equal(unpack_mma(moved.mma_weight), unpack_mma(packed.mma_weight)[order])
    assert torch.equal(decode_dot2(moved.dot2_qweight), decode_dot2(packed.dot2_qweight)[order])
    assert torch.equal(moved.scales, packed.scales[:, order])
    assert (moved.zeros is None) == sym and (sym or torch.equal(moved.zeros, packed.zeros[:, order]))
    x = testing.random_activations(3, 256, dtype=torch.bfloat16, seed=4, device="cpu")
    want = w4a16_linear(x, packed, backend="reference")[:, order]
    assert torch.equal(w4a16_linear(x, moved, backend="reference"), want)
    assert torch.equal(emulate_mma(x[:, moved.perm] if act else x, moved, torch.bfloat16),
                       emulate_mma(x[:, packed.perm] if act else x, packed, torch.bfloat16)[:, order])
    with pytest.raises(InputError, match="permutation of the layer's 64"):
        permute_rows(packed, torch.arange(63))


def test_gated_pair_gives_silu_gate_times_up():
    """packing.interleave_glu and w4a16_linear(glu=True): gate and up as one layer whose 16-row tiles hold 8 gate rows
    and then the same 8 features' up rows (what the kernel's epilogue pairs: rows gid and gid + 8), and the result
    silu(gate(x)) * up(x); the module (W4A16Linear.concat_glu) with biases the same; intermediates not a multiple of 8
    are refused."""
    from quantkit.kernels import ops
    from quantkit.kernels.packing import glu_order, interleave_glu

    gate, up = (prepare(_layer(n=48, k=128, g=32, sym=s, seed=20 + i), device="cpu", layouts=("mma", "dot2"))
                for i, s in enumerate((True, False)))
    assert glu_order(16).tolist() == [*range(8), *range(16, 24), *range(8, 16), *range(24, 32)]
    pair = interleave_glu(gate, up)
    assert pair.out_features == 96 and pair.zeros is not None
    x = testing.random_activations(5, 128, dtype=torch.float32, seed=21, device="cpu").to(torch.bfloat16)
    g, u = (w4a16_linear(x, p, backend="reference") for p in (gate, up))
    rows = w4a16_linear(x, pair, backend="reference")
    assert torch.equal(rows.view(5, 6, 2, 8)[:, :, 0].reshape(5, 48), g)
    assert torch.equal(rows.view(5, 6, 2, 8)[:, :, 1].reshape(5, 48), u)
    want = torch.nn.functional.silu(g) * u
    assert torch.equal(w4a16_linear(x, pair, backend="reference", glu=True), want)
    assert torch.equal(ops.glu_interleaved(rows), want)
    assert w4a16_linear(x[:0], pair, glu=True).shape == (0, 48)
    bias = [torch.randn(48).to(torch.bfloat16), None]
    mods = [W4A16Linear(p, b, backend="reference") for p, b in zip((gate, up), bias)]
    glu = W4A16Linear.concat_glu(*mods)
    assert glu.glu and glu.out_features == 48 and glu.packed.out_features == 96 and "glu=True" in repr(glu)
    assert torch.equal(glu(x), torch.nn.functional.silu(mods[0](x)) * mods[1](x))
    assert torch.equal(glu.forward_rows(x).view(5, 6, 2, 8)[:, :, 1].reshape(5, 48), mods[1](x))
    assert not ops.glu_in_kernel(5, glu.packed, x)  # no GPU here: torch's ops after the reference
    small = [prepare(_layer(n=12 * 2, k=128, g=32, seed=22), device="cpu")] * 2
    with pytest.raises(InputError, match="multiple of 8"):
        glu_order(12)
    with pytest.raises(InputError, match="multiple of 16"):
        w4a16_linear(x, small[0], glu=True)  # 24 rows: not a gated pair's layout


def test_rope_qkv_is_the_projection_then_transformers_rotary_and_cache_write():
    """packing.interleave_rope and ops.w4a16_rope_qkv (the reference product here; the decode kernel's epilogue on a
    GPU, tests/test_kernels_gpu.py): q, k and v as one layer whose q and k heads hold, in each 16-row tile, dims d ..
    d + 7 and then d + D / 2 .. + 7 (the kernel's rows gid and gid + 8), v's rows as they are; the module
    (W4A16Linear.concat_rope, with a bias) gives the three projections in their own order, and rope_qkv q and the
    caches of transformers' apply_rotary_pos_emb in fp32 from the 16-bit projections, rounded once, written at the
    position only; shapes it cannot take are refused with one-line errors."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from quantkit.kernels import ops
    from quantkit.kernels.packing import interleave_rope, rope_order

    heads, kv, d, k, b, length = 4, 2, 32, 128, 3, 10
    order = rope_order(heads, kv, d)
    assert order[:32].tolist() == [*range(8), *range(16, 24), *range(8, 16), *range(24, 32)]
    assert order[192:].tolist() == list(range(192, 256)) and sorted(order.tolist()) == list(range(256))
    with pytest.raises(InputError, match="multiple of 16"):
        rope_order(4, 2, 24)
    parts = [prepare(_layer(n=n * d, k=k, g=32, sym=i != 1, seed=40 + i), device="cpu", layouts=("mma", "dot2"))
             for i, n in enumerate((heads, kv, kv))]
    bias = [torch.randn(heads * d).to(torch.bfloat16), None, torch.randn(kv * d).to(torch.bfloat16)]
    mods = [W4A16Linear(p, bb, backend="reference") for p, bb in zip(parts, bias)]
    qkv = W4A16Linear.concat_rope(*mods, heads, kv, d)
    assert qkv.rope == (heads, kv, d) and f"rope={(heads, kv, d)}" in repr(qkv)
    x = testing.random_activations(b, k, dtype=torch.float32, seed=41, device="cpu").to(torch.bfloat16)[:, None]
    want_q, want_k, want_v = (m(x) for m in mods)
    assert torch.equal(qkv(x), torch.cat([want_q, want_k, want_v], -1))  # forward: the rows back in order
    rows = w4a16_linear(x, qkv.packed, qkv.bias, backend="reference")
    # the first q head's rows 8 .. 15 are dims 16 .. 23, its rows 16 .. 23 dims 8 .. 15
    assert torch.equal(rows[..., 8:16], want_q[..., 16:24]) and torch.equal(rows[..., 16:24], want_q[..., 8:16])
    angle = torch.rand(b, 1, d // 2, generator=torch.Generator().manual_seed(42)) * 6.3
    cos, sin = (torch.cat([f(angle)] * 2, -1).to(torch.bfloat16) for f in (torch.cos, torch.sin))
    caches = [torch.randn(b, kv, length, d).to(torch.bfloat16) for _ in range(2)]
    position = torch.tensor([7])
    got_k, got_v = (c.clone() for c in caches)
    q = qkv.rope_qkv(x, cos, sin, got_k, got_v, position)
    assert q.shape == (b, 1, heads * d)
    q4, k4 = (t.float().view(b, 1, -1, d).transpose(1, 2) for t in (want_q, want_k))
    rq, rk = (t.to(torch.bfloat16) for t in apply_rotary_pos_emb(q4, k4, cos.float(), sin.float()))
    assert torch.equal(q, rq.transpose(1, 2).reshape(b, 1, heads * d))
    assert torch.equal(got_k[:, :, 7], rk[:, :, 0]) and torch.equal(got_v[:, :, 7], want_v.view(b, kv, d))
    others = torch.arange(length) != 7
    assert torch.equal(got_k[:, :, others], caches[0][:, :, others])
    assert torch.equal(got_v[:, :, others], caches[1][:, :, others])
    assert ops.rope_in_kernel(b, qkv.packed, x) is None  # no GPU here: rope_rows after the reference product
    with pytest.raises(InputError, match="one row a sequence"):
        qkv.rope_qkv(x[:2], cos, sin, got_k, got_v, position)
    with pytest.raises(InputError, match="cos and sin must be"):
        qkv.rope_qkv(x, cos[..., :16], sin[..., :16], got_k, got_v, position)
    with pytest.raises(InputError, match="alike"):
        qkv.rope_qkv(x, cos, sin, got_k, got_v[:, :1], position)
    with pytest.raises(InputError, match="not 4, 2 and 2 heads of 16"):
        interleave_rope([parts[0], parts[1], parts[1]], 4, 2, 16)


def test_fold_is_a_decoder_layers_residual_add_and_rmsnorm():
    """ops.Fold through w4a16_linear (the reference here; the decode kernel on a GPU, tests/test_kernels_gpu.py): with
    rms = h and x = round(h * norm weight), the layer of transformers' RMSNorm(h) (the scale after the product, a
    rounding apart), act-order and a gated pair included; with residual, residual + the layer's own output in one
    16-bit add, and with next_w that times next_w; with ss, the stream's sums of squares by 16 features filled beside
    it (read, not changing the result, with rms); its operands checked with one-line errors."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from quantkit.kernels import ops
    from quantkit.kernels.ops import Fold
    from quantkit.kernels.packing import interleave_glu

    torch.manual_seed(0)
    packed = prepare(_layer(n=96, k=256, g=32, sym=False, act=True, seed=30), device="cpu")
    pair = interleave_glu(*(prepare(_layer(n=48, k=256, g=64, seed=31 + i), device="cpu") for i in range(2)))
    norm = LlamaRMSNorm(256, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(256) + 0.5)
    h = (torch.randn(2, 3, 256) * 4).to(torch.bfloat16)
    x = h * norm.weight
    bias = torch.randn(96).to(torch.bfloat16)
    with torch.no_grad():
        want = w4a16_linear(norm(h), packed, bias)
        got = w4a16_linear(x, packed, bias, fold=Fold(rms=h, eps=1e-5))
        assert got.shape == want.shape and testing.error_against(got, want.double()) < 2 * testing.TOLERANCE[torch.bfloat16]
        got = w4a16_linear(x, pair, glu=True, fold=Fold(rms=h, eps=1e-5))
        assert testing.error_against(got, w4a16_linear(norm(h), pair, glu=True).double()) < 2e-2
        residual, next_w = (torch.randn(2, 3, 96) * 3).to(torch.bfloat16), (torch.rand(96) + 0.5).to(torch.bfloat16)
        plain = w4a16_linear(x, packed, bias)
        stream = w4a16_linear(x, packed, bias, fold=Fold(residual=residual))
        assert torch.equal(stream, residual + plain)
        both = w4a16_linear(x, packed, bias, fold=Fold(residual=residual, next_w=next_w))
        assert both.shape == (2, 2, 3, 96) and torch.equal(both[0], stream) and torch.equal(both[1], stream * next_w)
        assert w4a16_linear(x[:, :0], packed, fold=Fold(residual=residual[:, :0], next_w=next_w)).shape == (2, 2, 0, 96)
        assert torch.equal(ops.rms_scale(h, 1e-5), torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + 1e-5))
        # ss: the stream's sums of squares by 16 features filled beside it; given with rms, the same result
        ss = torch.full((2, 3, 6), float("nan"))
        assert torch.equal(w4a16_linear(x, packed, bias, fold=Fold(residual=residual, next_w=next_w, ss=ss)), both)
        assert torch.equal(ss, ops.sum_squares(stream))
        assert torch.equal(ss[1, 2, 5], stream[1, 2, 80:].float().pow(2).sum())
        got = w4a16_linear(x, packed, bias, fold=Fold(rms=h, eps=1e-5, ss=ops.sum_squares(h)))
        assert torch.equal(got, w4a16_linear(x, packed, bias, fold=Fold(rms=h, eps=1e-5)))
    for fold, glu, match in ((Fold(rms=h[:, :2]), False, "rms must be x's shape"),
                             (Fold(residual=residual.float()), False, "residual must be"),
                             (Fold(residual=residual[..., :48]), True, "not for a gated pair"),
                             (Fold(next_w=next_w), False, "next_w needs residual"),
                             (Fold(residual=residual, ss=torch.zeros(2, 3, 5)), False, r"ss must be \(2, 3, 6\)"),
                             (Fold(rms=h, ss=torch.zeros(2, 3, 16, dtype=torch.float64)), False, "ss must be"),
                             (Fold(rms=h, ss=torch.zeros(2, 16, 3).transpose(1, 2)), False, "contiguous"),
                             (Fold(rms=h, residual=residual, ss=torch.zeros(2, 3, 6)), False, "not both"),
                             (Fold(ss=torch.zeros(2, 3, 6)), False, "ss goes with residual")):
        with pytest.raises(InputError, match=match) as e:
            w4a16_linear(x, pair if glu else packed, glu=glu, fold=fold)
        assert "\n" not in str(e.value)


def test_kernel_defines_are_macros_of_the_build_and_a_bad_one_is_named(monkeypatch):
    """QUANTKIT_KERNEL_DEFINES (csrc's tuning macros for an experiment) become nvcc -D flags among the build's flags,
    which the build hashes into its cache directory's name; anything but NAME or NAME=VALUE is refused with the item
    named."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setenv("QUANTKIT_KERNEL_DEFINES", "QK_STREAM_U_SMALL=8")
    assert build._arch_flags() == build.cuda_flags("90a") + ["-DQK_STREAM_U_SMALL=8"]
    monkeypatch.delenv("QUANTKIT_KERNEL_DEFINES")
    assert build._arch_flags() == build.cuda_flags("90a")
    assert build.defines({}) == []
    assert build.defines({"QUANTKIT_KERNEL_DEFINES": " QK_STREAM_U_SMALL=8  QK_X "}) == ["-DQK_STREAM_U_SMALL=8",
                                                                                         "-DQK_X"]
    with pytest.raises(InputError, match=r"QUANTKIT_KERNEL_DEFINES: '-O0' is not NAME or NAME=VALUE"):
        build.defines({"QUANTKIT_KERNEL_DEFINES": "QK_A=1 -O0"})


def test_bit_for_bit_comparisons_launch_alike(monkeypatch):
    """ops.mma_plan with blocks of 8 at one token tile: a plain launch left to the default plans the grid and sums of
    a fold's launch (blocks of 8 too since session 52), and asked for STREAM_WK_WARPS warps those of a prefetching
    one's and of the one-launch MLP's down, which is what the self-check's and GPU tests' bit-for-bit comparisons ask
    it for; blocks of 8 and of 4 sum in another order (what stopped session 48's first run of them as the default)."""
    from quantkit.kernels import ops, selfcheck

    monkeypatch.setattr(ops, "STREAM_WK_WARPS_ONE_TILE", 8)  # the default (a run with QUANTKIT_STREAM_WK_WARPS=4 too)
    monkeypatch.setattr(ops, "L2_PREFETCH_IN_KERNEL", True)
    n, k, *_, ms = selfcheck.FOLD_CASE
    for m in ms:
        for splits in (None, 2, 32):
            fold = ops.mma_plan(m, n, k, 132, splits=splits, fold=True)
            plain = ops.mma_plan(m, n, k, 132, splits=splits)
            assert plain.warps == 8 and plain == fold  # one token tile: blocks of 8 unless asked for 4
            assert ops.mma_plan(m, n, k, 132, splits=splits, fold=True, wk_warps=4).warps == 4
            prefetch = ops.mma_plan(m, n, k, 132, splits=splits, prefetch=True)
            assert prefetch.in_kernel and prefetch.warps == ops.STREAM_WK_WARPS
            asked = ops.mma_plan(m, n, k, 132, splits=splits, wk_warps=ops.STREAM_WK_WARPS)
            assert (asked.warps, asked.splits) == (prefetch.warps, prefetch.splits)
    inter, hidden, *_, ms = selfcheck.MLP_CASE
    for m in ms:  # the one launch's down: mma_splits' count for blocks of 4 (w4a16_mlp), as the plain launch's with 4
        one = ops.mma_splits(m, hidden, inter, 132, staged=False, mt=1, wk=True)
        plan = ops.mma_plan(m, hidden, inter, 132, wk_warps=ops.STREAM_WK_WARPS)
        assert (plan.warps, plan.splits) == (4, one)
    with pytest.raises(UnsupportedError, match="wk_warps=8"):
        ops.mma_plan(1, n, k, 132, prefetch=True, wk_warps=8)


def test_split_k_rules_on_the_benchmark_shapes(monkeypatch):
    """The streaming kernel's split-K rule (ops.mma_splits with ops.stream_wk) gives, on a 132-multiprocessor GPU, the
    counts fitted to the H200 sweep (bench/results/kernel_h200_splits.md), powers of two, and the launch's grid
    keeps them (ops.grid_splits); the clusters the dispatch would launch follow STREAM_CLUSTER_MAX."""
    from quantkit.kernels import ops

    shapes = ((4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192), (8192, 28672))
    want = {1: (2, 1, 4, 1, 2), 4: (2, 1, 4, 1, 2), 8: (2, 1, 4, 1, 2), 16: (2, 1, 4, 1, 2), 32: (2, 1, 2, 1, 1)}
    for m, counts in want.items():
        got = []
        for n, k in shapes:
            wk = ops.stream_wk(m)
            assert wk, (m, n, k)  # the warps share a tile at every M of the decode kernel
            s = ops.mma_splits(m, n, k, 132, staged=False, mt=ops.mma_tiles(m), wk=wk)
            assert s & (s - 1) == 0 and ops.grid_splits(k, s) == s
            got.append(s)
        assert tuple(got) == counts, (m, got)
    # blocks of 8 warps sharing a tile (one token tile; the default, QUANTKIT_STREAM_WK_WARPS=4 turns them off) count
    # as two: half the parts
    assert ops.STREAM_WK_WARPS_ONE_TILE == 8 or "QUANTKIT_STREAM_WK_WARPS" in os.environ  # 4 only when asked
    assert ops.stream_wk_warps(1, True) == ops.STREAM_WK_WARPS_ONE_TILE
    monkeypatch.setattr(ops, "STREAM_WK_WARPS_ONE_TILE", 8)
    assert ops.stream_wk_warps(1, True) == 8
    assert ops.stream_wk_warps(2, True) == ops.stream_wk_warps(1, False) == ops.stream_wk_warps(1, True, False) == 4
    got = tuple(ops.mma_splits(1, n, k, 132, staged=False, mt=1, wk=True, warps=8) for n, k in shapes)
    assert got == (1, 1, 2, 1, 1), got
    assert ops.mma_splits(1, 4096, 4096, 132, staged=False, mt=1, wk=False, warps=8) == 8  # warps: wk's blocks only
    assert ops.grid_splits(4096, 7) == 7 and ops.grid_splits(4096, 12) == 11 and ops.grid_splits(4096, 100) == 64
    assert ops.cluster_size(1, 4096, torch.device("cpu"), 16) == 0  # one split: nothing to reduce
    assert ops.cluster_size(4, 4096, torch.device("cpu"), 2) == 0  # above the limit: the workspace path


def test_wmma_split_rule():
    """The RDNA3 WMMA kernel's split-K (ops.wmma_splits, on a 96-compute-unit RX 7900 XTX): k_split a multiple of
    the group size (so of 16), 1 to WMMA_MAX_SPLITS splits, splits only where the grid is short of blocks."""
    from quantkit.kernels import ops

    cases = {  # (m, n, k, group): splits
        (16, 4096, 4096, 128): 3, (16, 4096, 14336, 32): 3, (9, 1024, 4096, 128): 4, (512, 4096, 4096, 128): 1,
        (64, 28672, 4096, 128): 1, (16, 192, 576, 192): 1, (300, 1536, 576, 64): 1,
    }
    for (m, n, k, g), want in cases.items():
        k_split = ops.wmma_splits(m, n, k, g, 96)
        assert k_split % g == 0 and k_split % 16 == 0, (m, n, k, g, k_split)
        assert -(-k // k_split) == want, (m, n, k, g, k_split)


def test_ws_stream_k_rule():
    """Stream-K of the warp-specialized kernel (ops.ws_stream_k) on a 132-multiprocessor GPU: all of them persistent,
    the tiles after whole waves cut among at most WS_SK_MAX_SPLIT blocks a tile; by rule where the tiles fill at most
    WS_SK_MAX_FILL of the multiprocessors or leave the grid's last wave at least WS_SK_MIN_IDLE idle
    (WS_SK_MIN_IDLE_SMALL below 256 tokens), on layers of K > WS_DEEP_K only up to M = WS_SK_MAX_M; forced wherever
    every block gets a step."""
    from quantkit.kernels import ops

    assert (ops.WS_SK_MAX_SPLIT, ops.WS_SK_MAX_M, ops.WS_SK_MAX_FILL) == (4, 512, 0.5)
    assert (ops.WS_SK_MIN_IDLE, ops.WS_SK_MIN_IDLE_SMALL) == (0.2, 0.1)
    assert ops.ws_stream_k(256, 4096, 14336, 132, 256) == (128, 128)  # 32 tiles, each cut in 4
    assert ops.ws_stream_k(64, 8192, 28672, 132, 64) == (132, 132)  # 64 tiles
    assert ops.ws_stream_k(256, 14336, 4096, 132, 256) == (0, 0)  # 112 tiles, the last wave 15% idle: the grid
    assert ops.ws_stream_k(128, 14336, 4096, 132, 128) == (132, 132)  # the same at 128 tokens: stream-K
    assert ops.ws_stream_k(256, 28672, 8192, 132, 256) == (132, 132)  # 224 tiles, the last wave 30% idle
    assert ops.ws_stream_k(512, 28672, 8192, 132, 256) == (132, 132)  # 448 tiles, the last wave 61% idle
    assert ops.ws_stream_k(2048, 28672, 8192, 132, 256) == (132, 132)  # 1792 tiles, 42% idle; K = 8192 at any M
    assert ops.ws_stream_k(512, 6144, 4096, 132, 256) == (132, 132)  # 96 tiles, 27% idle
    assert ops.ws_stream_k(512, 8192, 28672, 132, 256) == (0, 0)  # 128 tiles: one wave nearly full
    assert ops.ws_stream_k(1024, 4096, 14336, 132, 256) == (0, 0)  # 128 tiles
    assert ops.ws_stream_k(1024, 12288, 14336, 132, 256) == (0, 0)  # 384 tiles, the last wave 9% idle
    assert ops.ws_stream_k(1024, 12288, 14336, 132, 256, force=True) == (132, 132)
    assert ops.ws_stream_k(1024, 28672, 14336, 132, 256) == (0, 0)  # 896 tiles, 21% idle, but K > 8192 at M > 512
    assert ops.ws_stream_k(1024, 28672, 8192, 132, 256) == (132, 132)  # the same at K = 8192
    assert ops.ws_stream_k(256, 17024, 4096, 132, 256, force=True) == (132, 4)  # 133 tiles: the last one cut in 4
    assert ops.ws_stream_k(512, 16896, 4096, 132, 256, force=True) == (0, 0)  # 264 tiles: two whole waves
    assert ops.ws_stream_k(64, 128, 64, 132, 64, force=True) == (0, 0)  # one step of one tile cannot be cut in 4
    assert ops.ws_plan(256, 28672, 8192, 132) == (256, 132, 132, 1)
    assert ops.ws_plan(256, 14336, 4096, 132) == (256, 0, 0, 1)
    assert ops.ws_plan(100, 4096, 14336, 132) == (128, 128, 128, 1)
    assert ops.ws_plan(100, 4096, 14336, 132, stream_k=False) == (64, 0, 0, 1)


def test_ws_split_rule():
    """The warp-specialized kernel's grid of the smallest tile that holds M (64, 128 or 256 tokens) splits K
    (ops.ws_split, its splits one cluster) where its tiles fill at most half the multiprocessors: as many splits as keep
    one wave, at most WS_SPLIT_MAX, each at least MIN_CHUNKS_PER_SPLIT chunks, and on layers of K > 8192 only where the
    splits' blocks fill 90% of the multiprocessors; ahead of stream-K (ops.ws_plan), not where another tile is asked
    for or stream-K forced."""
    from quantkit.kernels import ops

    assert ops.WS_SPLIT_MAX == 3
    assert ops.ws_split(512, 4096, 4096, 132) == 2  # 64 tiles -> 128 blocks
    assert ops.ws_split(256, 4096, 4096, 132) == 3  # 32 tiles -> 96 blocks
    assert ops.ws_split(128, 4096, 4096, 132) == 3 and ops.ws_split(33, 4096, 4096, 132) == 3  # 128 / 64 tokens
    assert ops.ws_split(32, 4096, 4096, 132) == 1  # decode-sized: the decode kernel or ws_decode's stream-K
    assert ops.ws_split(256, 8192, 28672, 132) == 2 and ops.ws_split(64, 8192, 28672, 132) == 2
    assert ops.ws_split(256, 4096, 14336, 132) == 1  # 96 blocks of 132 on K = 14336: stream-K instead
    assert ops.ws_split(512, 4096, 14336, 132) == 2  # 128 blocks
    assert ops.ws_split(256, 6144, 4096, 132) == 2  # 48 tiles -> 96 blocks; 3 splits would take two waves
    assert ops.ws_split(512, 6144, 4096, 132) == 1  # 96 tiles
    assert ops.ws_split(256, 4096, 1024, 132) == 2  # 3 splits would leave 5 chunks a split
    assert ops.ws_split(256, 14336, 4096, 132) == 1  # 112 tiles
    assert ops.ws_split(1024, 4096, 4096, 132) == 1
    assert ops.ws_plan(512, 4096, 4096, 132) == (256, 0, 0, 2)
    assert ops.ws_plan(128, 4096, 4096, 132) == (128, 0, 0, 3) and ops.ws_plan(64, 6144, 4096, 132) == (64, 0, 0, 2)
    assert ops.ws_plan(512, 4096, 4096, 132, bt=128)[3] == 1 and ops.ws_plan(512, 4096, 4096, 132, bt=256)[3] == 2
    assert ops.ws_plan(256, 4096, 14336, 132, stream_k=True) == (256, 128, 128, 1)
    assert ops.mma_or_dequant(256, 4096, 4096, wgmma=True) == "wgmma"
    assert ops.mma_or_dequant(512, 4096, 4096, wgmma=True, sms=100) == "wgmma"  # 64 tiles in one wave: stream-K
    assert ops.ws_plan(512, 4096, 4096, 100) == (256, 100, 100, 1)


def test_ws_pdl_rule():
    """The warp-specialized kernel is a programmatic dependent launch of the packing of x (ops.WS_PDL) from 32 tokens a
    block up: at 16 (two blocks a multiprocessor) one layer measured 27% slower with it."""
    from quantkit.kernels import ops

    assert ops.WS_PDL and [bt for bt in (16, 32, 64, 128, 256) if ops.ws_pdl(bt)] == [32, 64, 128, 256]


def test_hopper_dispatch_on_the_benchmark_shapes():
    """On Hopper the warp-specialized wgmma kernel takes M = 33-512 on layers of 2^25 weights and more (up to 1024
    where K >= 8192, on layers of 2^26 weights and more, or where stream-K's rule takes the shape; 2048 on layers of
    2^27 weights and more with K >= 8192), with the tile the H200 runs measured fastest
    (bench/results/kernel_h200_ws_tma_fc2e238.json, kernel_h200_mc_d3dd64d.json, kernel_h200_e815c8d.json) on a
    132-multiprocessor GPU; on layers of 2^24 to 2^25 weights (4096x4096, 6144x4096) while its 256-token tiles fit one
    wave, up to M = 1024; dequantize + cuBLAS elsewhere."""
    from quantkit.kernels import ops

    # decode-sized batches: the warp-specialized kernel at 16 tokens a block on K-long layers at M = 9-16, at 32 on
    # layers of 2^25 weights and more at M = 17-32, with stream-K; else the decode kernel
    for n, k in ((4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192), (8192, 28672)):
        for m in (1, 8, 9, 16, 17, 32):
            ws = m > 16 and n * k >= 1 << 25 or 8 < m <= 16 and k >= 14336
            assert ops.mma_or_dequant(m, n, k, wgmma=True) == ("wgmma" if ws else "mma"), (m, n, k)
            assert ops.mma_or_dequant(m, n, k, wgmma=False) == "mma"
            if ws:
                bt, ctas, blocks, _ = ops.ws_plan(m, n, k, 132)
                assert bt == (16 if m <= 16 else 32) and ctas > 0, (m, n, k, bt, ctas)
    for n, k in ((14336, 4096), (4096, 14336), (28672, 8192), (8192, 28672)):
        for m in (33, 64, 128, 256, 512, 1024):
            # 14336x4096 at M = 1024: 448 tiles, the grid's last wave 61% idle, so stream-K
            ws = m <= 512 or k >= 8192 or (n, k) == (14336, 4096)
            assert ops.mma_or_dequant(m, n, k, wgmma=True) == ("wgmma" if ws else "dequant"), (m, n, k)
            assert ops.wgmma_ws(m, n, k) == ws, (m, n, k)
        big = n * k >= 1 << 27  # 28672x8192, 8192x28672
        assert ops.mma_or_dequant(2048, n, k, wgmma=True) == ("wgmma" if big else "dequant"), (n, k)
        assert ops.mma_or_dequant(4096, n, k, wgmma=True) == "dequant"
    # 4096x4096: split-K in a cluster up to M = 512, the 256-token grid at 1024 (128 tiles), then dequantize + cuBLAS;
    # 6144x4096 up to M = 512 (96 tiles: stream-K)
    for m in (33, 64, 128, 256, 512, 1024):
        assert ops.mma_or_dequant(m, 4096, 4096, wgmma=True) == "wgmma" and ops.wgmma_ws(m, 4096, 4096)
    assert ops.ws_plan(1024, 4096, 4096, 132) == (256, 0, 0, 1)
    assert ops.mma_or_dequant(2048, 4096, 4096, wgmma=True) == "dequant"
    assert ops.wgmma_ws(512, 6144, 4096) and ops.ws_plan(512, 6144, 4096, 132) == (256, 132, 132, 1)
    assert not ops.wgmma_ws(1024, 6144, 4096)
    # K < 8192 up to M = 1024 on layers of 2^26 weights and more (the fused gate and up projections), or by stream-K
    assert ops.wgmma_ws(1024, 28672, 4096) and not ops.wgmma_ws(2048, 28672, 4096)
    assert ops.wgmma_ws(1024, 14336, 4096) and not ops.wgmma_ws(1024, 12288, 4096)  # 384 tiles, 9% idle
    # tokens a block: (M, N) -> bt
    want = {(64, 28672): 64, (128, 28672): 128, (256, 28672): 256, (128, 14336): 64, (256, 14336): 256,
            (128, 8192): 64, (256, 8192): 128, (512, 8192): 256, (256, 4096): 64, (512, 4096): 128, (1024, 4096): 256}
    assert {key: ops.wgmma_ws_bt(*key, 132) for key in want} == want
    # pairs of blocks sharing x: no split-K and an even number of 128-row blocks
    assert ops.ws_multicast_fits(1168, 2048, 1) and not ops.ws_multicast_fits(1040, 2048, 1)
    assert not ops.ws_multicast_fits(1168, 2048, 2)


def test_pipelined_32_is_off_unless_the_environment_turns_it_on():
    """ops.WS_PIPELINED_32 (the pipelined 32-token instance, under measurement) is off by default and on for a process
    started with QUANTKIT_WS_PIPELINED_32=1, so that an eval or profile run can measure it without a code change."""
    import os
    import subprocess
    import sys

    code = "from quantkit.kernels import ops; print(ops.WS_PIPELINED_32)"
    env = {k: v for k, v in os.environ.items() if k != "QUANTKIT_WS_PIPELINED_32"}
    for value, want in ((None, "False"), ("0", "False"), ("1", "True")):
        run_env = env if value is None else {**env, "QUANTKIT_WS_PIPELINED_32": value}
        out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == want, (value, out.stdout, out.stderr)


def test_self_check_reaches_every_hopper_plan():
    """The self-check's dispatch cases (selfcheck.DISPATCH_CASES) take, on a 132-multiprocessor Hopper GPU, the decode
    kernel and the warp-specialized kernel at every tile under every plan the dispatch makes (stream-K, cluster
    split-K, the grid), which its small forced-path cases never reach; so a wrong instance on a user's GPU stops the
    first build instead of a figure."""
    from quantkit.kernels import ops, selfcheck

    plans = set()
    for n, k, g, sym, act, dtype, ms in selfcheck.DISPATCH_CASES:
        assert n * k >= 1 << 25 and k % g == 0 and dtype in (torch.float16, torch.bfloat16)
        for m in ms:
            path = ops.mma_or_dequant(m, n, k, wgmma=True, sms=132)
            if path != "wgmma":
                plans.add(path)
                continue
            assert ops.wgmma_ws(m, n, k, 132), (m, n, k)
            bt, ctas, _, splits = ops.ws_plan(m, n, k, 132)
            plans.add((bt, "stream-K" if ctas else f"{splits} splits" if splits > 1 else "grid"))
    assert {p for p in plans if isinstance(p, tuple) and p[1] == "stream-K"} == {
        (bt, "stream-K") for bt in (16, 32, 64, 128, 256)}
    assert {(64, "3 splits"), (128, "3 splits"), (256, "3 splits"), (256, "2 splits")} <= plans
    assert {(64, "grid"), (256, "grid"), "mma"} <= plans
    # both activation types, both symmetries, act-order, and the seed's group of 32 beside 128
    cases = selfcheck.DISPATCH_CASES
    assert {c[5] for c in cases} == {torch.float16, torch.bfloat16} and {c[3] for c in cases} == {True, False}
    assert any(c[4] for c in cases) and {c[2] for c in cases} == {32, 128}


@pytest.mark.parametrize("glu_ws", [True, False])
def test_self_check_stops_on_a_wrong_kernel(monkeypatch, glu_ws):
    """self_check runs the forced paths of CASES, the dispatch of DISPATCH_CASES and the gated pair's epilogue of
    GLU_CASE (at the rows where the kernel applies it, each split way), with ops.GLU_WS GLU_WS_CASE through the
    warp-specialized kernel, against the reference, the fold of FOLD_CASE (each split way) against the same
    kernel's plain output and the one-launch MLP of MLP_CASE (each split way) against its two launches (here every
    kernel call stood in for by the reference on the CPU,
    the warp-specialized kernel taking M > 16) and stops at the first one off by more than the tolerance, naming the
    kernel, the shape and what to do."""
    from quantkit.kernels import ops, selfcheck
    from quantkit.kernels.reference import reference_linear

    monkeypatch.setattr(selfcheck, "CASES", ((3, 64, 256, 64, False, True),))
    monkeypatch.setattr(selfcheck, "DISPATCH_CASES", ((128, 512, 128, True, False, torch.bfloat16, (1, 17)),))
    monkeypatch.setattr(ops, "kernel_path", lambda m, packed, x: ("wgmma" if m > 16 else "mma", ""))
    monkeypatch.setattr(ops, "wgmma_ws", lambda m, n, k, sms=132: m > 16)
    monkeypatch.setattr(ops, "_sm_count", lambda device: 132)
    monkeypatch.setattr(ops, "GLU_WS", glu_ws)
    calls = []

    monkeypatch.setattr(selfcheck, "GLU_CASE", (16, 128, 64, True, (1, 32)))
    monkeypatch.setattr(selfcheck, "GLU_WS_CASE", (16, 128, 64, False, (40,)))
    monkeypatch.setattr(selfcheck, "FOLD_CASE", (32, 192, 64, False, True, (2,)))
    monkeypatch.setattr(selfcheck, "MLP_CASE", (64, 128, 64, True, (3,)))
    monkeypatch.setattr(ops, "FUSED_MLP", True)  # (off by default: the self-check runs the one launch where it may run)

    def kernels(x, packed, bias=None, *, backend, **how):
        glu, fold = how.get("glu", False), how.get("fold")
        tag = backend + ("+glu" if glu else "") + ("" if fold is None else "+rms" if fold.rms is not None else "+res")
        calls.append((x.shape[0], packed.in_features, tag))
        if fold is None:
            y = reference_linear(x, packed, bias)
            y = ops.glu_interleaved(y) if glu else y
        else:  # the reference's fold (its residual add on reference_linear's output, as the kernel's on its own)
            y = real(x, packed, bias, backend="reference", glu=glu, fold=fold)
        return y * 1.01 if wrong == (x.shape[0], tag) else y

    real = ops.w4a16_linear
    monkeypatch.setattr(ops, "w4a16_linear", kernels)
    cpu = torch.device("cpu")
    pair = [(1, 128, "kernel+glu")] * 3 + [(32, 128, "kernel+glu")] * glu_ws  # each split way at M = 1
    fold = [(2, 192, "mma"), (2, 192, "mma+res"), (2, 192, "mma"), (2, 192, "mma+rms"), (2, 192, "mma+rms"),
            (2, 128, "mma"), (2, 128, "mma+glu+rms"), (2, 128, "mma+glu+rms")] * 3  # each split way; rms: no ss, ss
    # the two launches' gated pair once, then each split way the one launch (here, on the CPU, its two) against down
    mlp = [(3, 128, "mma+glu")] + [(3, 128, "kernel+glu"), (3, 64, "kernel"), (3, 64, "mma")] * 3
    for wrong in ((None, (3, "mma"), (3, "dot2"), (17, "kernel"), (1, "kernel+glu")) + ((40, "kernel+glu"),) * glu_ws
                  + ((2, "mma+res"), (2, "mma+rms"), (2, "mma+glu+rms"), (3, "kernel+glu"))):
        calls.clear()
        if wrong is None:
            selfcheck.self_check(cpu, force=True)
            assert calls == ([(3, 256, "mma"), (3, 256, "dequant"), (3, 256, "dot2")] * 2
                             + [(1, 512, "kernel"), (17, 512, "kernel")] + pair * 2
                             + [(40, 128, "kernel+glu")] * glu_ws + (fold + mlp) * 2)
            continue
        with pytest.raises(selfcheck.KernelSelfCheckError) as e:
            selfcheck.self_check(cpu, force=True)
        if wrong[1].startswith("mma+"):  # the fold: against the kernel's own plain output
            assert "W4A16 kernel 'mma' with the folded " in str(e.value) and "(M=2 " in str(e.value)
            assert "report this with the GPU name" in str(e.value) and "\n" not in str(e.value)
            continue
        if wrong == (3, "kernel+glu"):  # the one-launch MLP: against its two launches
            assert "W4A16 kernel 'mma' with the gated MLP in one launch disagrees with its two launches on cpu (M=3 " \
                in str(e.value) and "\n" not in str(e.value)
            continue
        path = ("wgmma" if wrong[0] > 16 else "mma") if wrong[1].startswith("kernel") else wrong[1]
        assert f"W4A16 kernel '{path}' " in str(e.value) and f"disagrees with the reference on cpu (M={wrong[0]}" in str(e.value)
        assert "report this with the GPU name" in str(e.value) and "\n" not in str(e.value)
        assert cpu not in selfcheck._checked  # checked again next time, not taken as passed


def _cpp_params(source: str, name: str) -> list[str]:
    """The parameters of the C++ function ``name`` defined in ``source`` (split at its top-level commas)."""
    import re

    m = re.search(rf"^[\w:<>, ]+?\b{name}\(", source, re.M)
    assert m, f"no definition of {name} in csrc/w4a16_ext.cu"
    depth, params, cur = 0, [], ""
    for ch in source[m.end():]:
        if ch in "(<":
            depth += 1
        elif ch in ")>":
            if depth == 0:
                break
            depth -= 1
        if ch == "," and depth == 0:
            params.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return params + ([cur.strip()] if cur.strip() else [])


def test_python_calls_into_the_extension_match_its_bindings():
    """Every call that quantkit.kernels.ops makes into the extension with its arguments spelled out passes as many as
    the bound C++ function takes (pybind11 binds them without defaults): a mismatch would otherwise show only on a
    GPU machine, as a TypeError after the build."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cpp = (root / "csrc" / "w4a16_ext.cu").read_text()
    bound = set(re.findall(r'm\.def\("(\w+)", &\1', cpp))
    assert {"mma_gemm", "l2_prefetch", "wgmma_ws_gemm"} <= bound
    arity = {name: len(_cpp_params(cpp, name)) for name in bound}
    assert arity["mma_gemm"] == 26 and arity["l2_prefetch"] == 2
    tree = ast.parse((root / "quantkit" / "kernels" / "ops.py").read_text())
    checked = 0
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in bound):
            continue
        owner = node.func.value
        if not ((isinstance(owner, ast.Name) and owner.id == "ext") or
                (isinstance(owner, ast.Call) and getattr(owner.func, "attr", None) == "load_extension")):
            continue
        if any(isinstance(a, ast.Starred) for a in node.args) or node.keywords:
            continue
        assert len(node.args) == arity[node.func.attr], \
            f"ops.py line {node.lineno}: {node.func.attr} called with {len(node.args)} arguments, bound with {arity[node.func.attr]}"
        checked += 1
    assert checked >= 7  # mma_gemm, wgmma_gemm, wgmma_ws_gemm, wgmma_pack_x, mma_dequant, l2_prefetch, the depth


def test_a_wheel_carries_the_kernel_sources(tmp_path):
    """A wheel (pip install . without -e, or a published one) holds every file the build compiles and hashes, under
    quantkit/_csrc, where build.CSRC finds them: the kernels build from a wheel as from a clone. Built from a copy of
    what a wheel is made of, so that no earlier build directory lends it files."""
    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("quantkit", "csrc"):  # quantkit/_csrc, a link to ../csrc, stays one
        shutil.copytree(root / name, src / name, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, timeout=600)
    (wheel,) = tmp_path.glob("quantkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert build.CSRC == (root / "quantkit" / "_csrc").resolve()
    needed = build.SOURCES + build.HEADERS + ("w4a16_host.cpp",)
    assert len(build.HEADERS) >= 10 and {f"quantkit/_csrc/{name}" for name in needed} <= names


def test_random_layers_drawn_on_the_device_keep_the_distribution():
    """testing.random_qlinear(draw_on_device=True) draws with a generator of the layer's device (bench/chain_bench.py's
    3.6 GB on a GPU); on the CPU that is the same generator, so the same layer, and asymmetric zeros and act-order
    are drawn there too."""
    kw = dict(group_size=32, act_order=True, dtype=torch.bfloat16, seed=3)
    for sym in (True, False):
        a = testing.random_qlinear(64, 256, sym=sym, **kw)
        b = testing.random_qlinear(64, 256, sym=sym, draw_on_device=True, **kw)
        for name in ("codes", "scales", "zeros", "g_idx"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (sym, name)
    assert int(a.codes.max()) == 15 and int(a.zeros.min()) >= 1 and not torch.equal(a.g_idx, a.g_idx.sort().values)


def test_mlp_in_one_launch_rule_and_fallback(monkeypatch):
    """ops.mlp_at takes the one-launch MLP (csrc qk_mma_mlp) with FUSED_MLP (off by default) at 1 to MLP_MAX_M rows
    where the gated pair runs unsplit (the bits of its two launches), never with FUSED_MLP off; mlp_ready needs both
    layers on an NVIDIA GPU's "mma" layout of one symmetry without act-order, down taking the pair's outputs.
    Elsewhere (here, the CPU) w4a16_mlp is the pair then down, and the eval's FusedGatedMLP runs the two layers."""
    from quantkit.eval.fuse import FusedGatedMLP
    from quantkit.kernels import ops, packing
    from quantkit.kernels.module import W4A16Linear

    assert not ops.FUSED_MLP or "QUANTKIT_FUSED_MLP" in os.environ  # off by default (measured slower)
    monkeypatch.setattr(ops, "FUSED_MLP", True)
    pair = SimpleNamespace(out_features=28672, in_features=4096)  # Llama-3-8B's gate/up: 1792 tiles of 16 rows
    assert [m for m in range(0, 12) if ops.mlp_at(m, pair, 132)] == list(range(1, ops.MLP_MAX_M + 1))
    wide = SimpleNamespace(out_features=512, in_features=16384)  # 32 tiles: the rule splits them at M = 1
    assert ops.mma_splits(1, 512, 16384, 132, staged=False, mt=1, wk=True) > 1 and not ops.mlp_at(1, wide, 132)
    monkeypatch.setattr(ops, "FUSED_MLP", False)
    assert not ops.mlp_at(1, pair, 132)
    monkeypatch.setattr(ops, "FUSED_MLP", True)

    gate, up, down = (prepare(testing.random_qlinear(n, k, group_size=64, sym=True, act_order=False,
                                                     dtype=torch.bfloat16, seed=90 + i), device="cpu")
                      for i, (n, k) in enumerate(((64, 128), (64, 128), (128, 64))))
    packed_pair = packing.interleave_glu(gate, up)
    assert not ops.mlp_ready(packed_pair, down)  # no NVIDIA GPU here
    x = testing.random_activations(3, 128, dtype=torch.bfloat16, seed=91, device="cpu")
    want = w4a16_linear(w4a16_linear(x, packed_pair, glu=True), down)
    assert torch.equal(ops.w4a16_mlp(x, packed_pair, down), want)
    from quantkit.kernels import module

    monkeypatch.setattr(module, "mlp_ready", lambda pair, down: True)  # as on a GPU: the module asks, the op decides
    monkeypatch.setattr(module, "sm_count", lambda device: 132)
    layer, down_layer = W4A16Linear(packed_pair, glu=True), W4A16Linear(down)
    assert layer.fuses_with(down_layer) and layer.fuses_at(3) == ops.mlp_at(3, packed_pair, 132)
    assert not layer.fuses_with(W4A16Linear(down, torch.zeros(128)))  # a bias: two launches
    calls = []
    monkeypatch.setattr(W4A16Linear, "mlp", lambda self, x, d: calls.append(x.shape) or want)
    mlp = FusedGatedMLP(layer, down_layer, torch.nn.functional.silu, 64)
    assert torch.equal(mlp(x), want) and calls == [(3, 128)]
    assert mlp(x.repeat(3, 1)).shape == (9, 128) and calls == [(3, 128)]  # 9 rows: the two layers
