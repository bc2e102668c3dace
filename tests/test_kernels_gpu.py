"""The kernels against the reference on the GPU they run on (skipped without CUDA): the issue-4 sweep of M,
several (N, K) including non-powers of two, group sizes 32/64/128, symmetric and asymmetric, act-order, fp16
and bf16, and a group size of 192. Tolerances: quantkit.kernels.testing (stated and justified there)."""

from __future__ import annotations

import pytest
import torch

from quantkit.errors import InputError, UnsupportedError
from quantkit.kernels import kernel_available, prepare, reference_weight, self_check, w4a16_linear
from quantkit.kernels import build, ops, packing, testing

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU"),
]

MS = (1, 2, 3, 4, 7, 8, 15, 16, 31, 64, 127, 256, 1024)
SHAPES = ((576, 1536), (1536, 576), (2112, 4224), (4096, 1024))  # (N, K)
LAYERS = [  # (group, sym, act_order)
    (32, True, False), (64, False, False), (128, True, False), (128, False, True), (32, False, True),
    (192, False, False),  # a group size that is not a power of two: the kernels' group index is a reciprocal multiply
]


@pytest.fixture(scope="module")
def device():
    ok, reason = kernel_available()
    if not ok:
        pytest.fail(f"a GPU is present but the kernels are not: {reason}")
    self_check("cuda")
    return torch.device("cuda", torch.cuda.current_device())


def _backends(m):
    if torch.version.hip:
        return ("auto", "dot2", "wmma") if m <= ops.DOT2_MAX_M else ("auto", "wmma")
    hopper = torch.cuda.get_device_capability() == (9, 0)
    return (("auto", "mma", "stream", "stream_wk", "staged", "dequant", "wmma")
            + (("dot2",) if m <= ops.DOT2_MAX_M else ()) + (("wgmma", "wgmma_regs", "wgmma_ws") if hopper else ()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("group,sym,act", LAYERS, ids=[f"g{g}-{'sym' if s else 'asym'}{'-act' if a else ''}" for g, s, a in LAYERS])
@pytest.mark.parametrize("n,k", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
def test_kernels_match_reference(device, dtype, group, sym, act, n, k):
    if k % group:
        pytest.skip("group does not divide K")
    seed = n + k + group
    ql = testing.random_qlinear(n, k, group_size=group, sym=sym, act_order=act, dtype=dtype, seed=seed)
    layouts = ("dot2",) if torch.version.hip else ("mma", "dot2")
    packed = prepare(ql, device=device, layouts=layouts)
    w = reference_weight(packed, dtype)
    bias = testing.random_activations(1, n, dtype=dtype, seed=seed + 1, device=device)[0]
    failures = []
    for m in MS:
        x = testing.random_activations(m, k, dtype=dtype, seed=seed + m, device=device)
        ref_err = testing.relative_error(w4a16_linear(x, packed, bias, backend="reference"), w, x, bias)
        for backend in _backends(m):
            torch.full((m * n * 2,), float("nan"), device=device)  # poison the allocator's next block
            if backend == "staged":
                y = w4a16_linear(x, packed, bias, backend="mma", staged=True)
            elif backend == "stream":  # the decode kernel at every M, as a programmatic launch where there is one
                y = w4a16_linear(x, packed, bias, backend="mma", staged=False, pdl=True, wk=False)
            elif backend == "wgmma_regs":  # weights one step ahead in registers (default: through shared memory)
                y = w4a16_linear(x, packed, bias, backend="wgmma", wsm=False)
            elif backend == "wgmma_ws":  # the warp-specialized kernel
                y = w4a16_linear(x, packed, bias, backend="wgmma", ws=True)
            elif backend == "stream_wk":  # the block's warps share one tile and take turns over the chunks
                y = w4a16_linear(x, packed, bias, backend="mma", staged=False, mt=min(ops.mma_tiles(m), 4), wk=True)
            else:
                y = w4a16_linear(x, packed, bias, backend=backend)
            err = testing.relative_error(y, w, x, bias)
            tol = testing.tolerance(dtype, backend=backend if backend in ("dot2", "wmma") else "mma", k=k,
                                    group_size=group)
            if not err <= tol:
                failures.append(f"M={m} {backend}: {err:.2e} > {tol:.1e} (reference {ref_err:.2e})")
    assert not failures, "; ".join(failures)


def test_splits_and_tiles_agree(device):
    ql = testing.random_qlinear(1024, 2048, group_size=128, sym=False, act_order=False, dtype=torch.bfloat16, seed=7)
    packed = prepare(ql, device=device)
    x = testing.random_activations(20, 2048, dtype=torch.bfloat16, seed=8, device=device)
    w = reference_weight(packed, torch.bfloat16)
    for splits in (1, 2, 3, 8, 32):
        for mt, staged in ((1, False), (2, False), (4, False), (8, False), (8, True)):
            for pdl in (False, True) if not staged else (False,):
                y = w4a16_linear(x, packed, backend="mma", splits=splits, mt=mt, staged=staged, pdl=pdl)
                err = testing.relative_error(y, w, x)
                assert err <= testing.TOLERANCE[torch.bfloat16], (splits, mt, staged, pdl, err)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_wmma_splits_and_partial_blocks_agree(device, dtype):
    """The RDNA3 WMMA kernel (on NVIDIA through its stand-in for WMMA) on a layer whose N leaves the last block of 64
    columns a quarter full (1040), at token counts that leave the last block of 32 rows partly filled, with 1 to 4
    splits of K (each added into the 16-bit output) and the automatic count; asymmetric, with a bias."""
    ql = testing.random_qlinear(1040, 1536, group_size=64, sym=False, act_order=False, dtype=dtype, seed=17)
    packed = prepare(ql, device=device, layouts=("dot2",))
    w = reference_weight(packed, dtype)
    bias = testing.random_activations(1, 1040, dtype=dtype, seed=18, device=device)[0]
    for m in (1, 9, 33, 100):
        x = testing.random_activations(m, 1536, dtype=dtype, seed=19 + m, device=device)
        for splits in (None, 1, 2, 3, 4):
            y = w4a16_linear(x, packed, bias, backend="wmma", splits=splits)
            err = testing.relative_error(y, w, x, bias)
            assert err <= testing.tolerance(dtype, backend="wmma"), (m, splits, err)


def test_stream_warps_sharing_a_tile_agree(device):
    """The decode kernel with its warps sharing one tile (wk) on a layer with an odd number of 16-row tiles (65), at
    token counts that leave token tiles partly filled, with every split-K count (a warp may get no chunk)."""
    ql = testing.random_qlinear(1040, 2048, group_size=64, sym=False, act_order=False, dtype=torch.bfloat16, seed=13)
    packed = prepare(ql, device=device)
    w = reference_weight(packed, torch.bfloat16)
    for m in (1, 5, 13, 20, 32, 40):
        x = testing.random_activations(m, 2048, dtype=torch.bfloat16, seed=14 + m, device=device)
        for mt in (1, 2, 4):
            for splits in (None, 1, 3, 8, 32):
                y = w4a16_linear(x, packed, backend="mma", staged=False, mt=mt, wk=True, splits=splits)
                err = testing.relative_error(y, w, x)
                assert err <= testing.TOLERANCE[torch.bfloat16], (m, mt, splits, err)
    with pytest.raises(UnsupportedError, match="wk .* mt <= 4"):
        w4a16_linear(x, packed, backend="mma", staged=False, mt=8, wk=True)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="the wgmma kernel runs on Hopper (compute capability 9.0)")
def test_wgmma_tiles_and_splits_agree(device):
    ql = testing.random_qlinear(1040, 2048, group_size=32, sym=False, act_order=True, dtype=torch.bfloat16, seed=11)
    packed = prepare(ql, device=device)
    w = reference_weight(packed, torch.bfloat16)
    for m in (1, 65, 300):
        x = testing.random_activations(m, 2048, dtype=torch.bfloat16, seed=12 + m, device=device)
        for bt, dense in ((64, False), (64, True), (128, False), (128, True), (256, False)):
            for wsm in (False, True):
                for splits in (1, 3, 8):
                    y = w4a16_linear(x, packed, backend="wgmma", bt=bt, splits=splits, dense=dense, wsm=wsm)
                    err = testing.relative_error(y, w, x)
                    assert err <= testing.TOLERANCE[torch.bfloat16], (m, bt, dense, wsm, splits, err)
        for bt in (16, 32, 64, 128, 256):  # the warp-specialized kernel; 7 splits leave the last one a short step
            for splits in (1, 3, 7, 8):
                y = w4a16_linear(x, packed, backend="wgmma", bt=bt, splits=splits, ws=True)
                err = testing.relative_error(y, w, x)
                assert err <= testing.TOLERANCE[torch.bfloat16], (m, bt, "ws", splits, err)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="the wgmma kernel runs on Hopper (compute capability 9.0)")
@pytest.mark.parametrize("dtype,sym", [(torch.bfloat16, True), (torch.float16, False)], ids=["bf16-sym", "fp16-asym"])
def test_wgmma_ws_multicast_is_bit_equal(device, dtype, sym):
    """The warp-specialized kernel with pairs of blocks sharing x through multicast tensor copies gives the bits it
    gives without: every tile (a stage of 4, 2 and 1 chunks: halves by chunks and by rows), token counts that leave
    the last token tile part empty, 73 row tiles (10 blocks of 128 rows, the last with one live tile), act-order and
    group 32 (two groups a chunk)."""
    ql = testing.random_qlinear(1168, 2048, group_size=32, sym=sym, act_order=True, dtype=dtype, seed=19)
    packed = prepare(ql, device=device)
    w = reference_weight(packed, dtype)
    for m in (1, 65, 300):
        x = testing.random_activations(m, 2048, dtype=dtype, seed=20 + m, device=device)
        for bt in (64, 128, 256):
            want = w4a16_linear(x, packed, backend="wgmma", bt=bt, splits=1, ws=True, multicast=False)
            got = w4a16_linear(x, packed, backend="wgmma", bt=bt, splits=1, ws=True, multicast=True)
            assert testing.relative_error(got, w, x) <= testing.TOLERANCE[dtype], (m, bt)
            assert torch.equal(got, want), (m, bt)
    with pytest.raises(UnsupportedError, match="multicast needs no split-K"):
        w4a16_linear(x, packed, backend="wgmma", bt=64, splits=2, ws=True, multicast=True)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="the wgmma kernel runs on Hopper (compute capability 9.0)")
@pytest.mark.parametrize("dtype,sym,act", [(torch.bfloat16, True, False), (torch.float16, False, True)],
                         ids=["bf16-sym", "fp16-asym-act"])
def test_wgmma_ws_stream_k(device, dtype, sym, act):
    """Stream-K of the warp-specialized kernel against the reference, at every tile: fewer tiles than multiprocessors
    (each tile cut into runs, one tile of 128 rows cut in four), more (whole waves, then the rest cut into runs: 16 x
    10 tiles at 64 tokens), token counts and 73 row tiles that leave the last tiles part empty, act-order and two
    groups a chunk; the same bits twice (the partial sums are added in a fixed order)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    for n, k, ms in ((1168, 2048, (1, 65, 300, 1000)), (128, 2048, (64,))):
        ql = testing.random_qlinear(n, k, group_size=32, sym=sym, act_order=act, dtype=dtype, seed=23 + n)
        packed = prepare(ql, device=device)
        w = reference_weight(packed, dtype)
        for m in ms:
            x = testing.random_activations(m, k, dtype=dtype, seed=24 + m, device=device)
            for bt in (16, 32, 64, 128, 256):
                ctas, blocks = ops.ws_stream_k(m, n, k, sms, bt, force=True)
                assert ctas > 0, (n, m, bt)  # every case here runs stream-K, not the grid
                y = w4a16_linear(x, packed, backend="wgmma", bt=bt, ws=True, stream_k=True)
                err = testing.relative_error(y, w, x)
                assert err <= testing.TOLERANCE[dtype], (n, m, bt, ctas, blocks, err)
                assert torch.equal(y, w4a16_linear(x, packed, backend="wgmma", bt=bt, ws=True, stream_k=True))
    with pytest.raises(UnsupportedError, match="stream-K takes no split-K"):
        w4a16_linear(x, packed, backend="wgmma", bt=64, splits=2, ws=True, stream_k=True)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="the wgmma kernel runs on Hopper (compute capability 9.0)")
@pytest.mark.parametrize("dtype,sym,act,group", [(torch.bfloat16, True, False, 128), (torch.float16, False, True, 32)],
                         ids=["bf16-sym-g128", "fp16-asym-act-g32"])
def test_wgmma_ws_pipelined_32(device, dtype, sym, act, group):
    """The warp-specialized kernel's pipelined instance at 32 tokens a block (a producer warpgroup that hands its
    registers over, the next stage dequantized while this one's MMAs run) against the reference and bit for bit
    against the plain instance (the same MMAs into the same sums in the same order): the grid, its cluster split-K,
    stream-K, token counts that leave the last token tile part empty, 73 row tiles, a K that ends inside a stage (34
    chunks), act-order, group 32. Refused at any other tile."""
    ql = testing.random_qlinear(1168, 2176, group_size=group, sym=sym, act_order=act, dtype=dtype, seed=41)
    packed = prepare(ql, device=device)
    w = reference_weight(packed, dtype)
    for m in (1, 17, 32, 65):
        x = testing.random_activations(m, 2176, dtype=dtype, seed=42 + m, device=device)
        for kw in ({"splits": 1}, {"splits": 3}, {"stream_k": True}):
            plain = w4a16_linear(x, packed, backend="wgmma", bt=32, ws=True, pipelined=False, **kw)
            y = w4a16_linear(x, packed, backend="wgmma", bt=32, ws=True, pipelined=True, **kw)
            err = testing.relative_error(y, w, x)
            assert err <= testing.TOLERANCE[dtype], (m, kw, err)
            assert torch.equal(y, plain), (m, kw)
    with pytest.raises(UnsupportedError, match="pipelined instance"):
        w4a16_linear(x, packed, backend="wgmma", bt=64, ws=True, pipelined=True)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="the warp-specialized kernel is Hopper's")
def test_ws_probe_streams_without_the_product(device):
    """The warp-specialized kernel's probe (ops.ws_probe: its consumers only wait for each stage, or also read it, or
    also dequantize it, and give it back; or only wait, its producer copying no x) walks the same stages as the
    kernel, stream-K and the grid, 16 and 32 tokens, a K that ends inside a stage: it finishes (a consumer that
    missed a stage would hang its producer), computes no product (zeros), and the kernel after it is right."""
    ql = testing.random_qlinear(1168, 2176, group_size=128, sym=True, act_order=False, dtype=torch.bfloat16, seed=43)
    packed = prepare(ql, device=device)
    w = reference_weight(packed, torch.bfloat16)
    x = testing.random_activations(20, 2176, dtype=torch.bfloat16, seed=44, device=device)
    for bt in (16, 32):
        for stream_k in (True, False):
            for level in (1, 2, 3, 4):
                y = ops.ws_probe(x, packed, level, bt=bt, stream_k=stream_k)
                assert y.shape == (20, 1168) and not y.any(), (bt, stream_k, level)
    y = w4a16_linear(x, packed, backend="wgmma", bt=32, ws=True, stream_k=True)
    assert testing.relative_error(y, w, x) <= testing.TOLERANCE[torch.bfloat16]
    with pytest.raises(InputError, match="probe level"):
        ops.ws_probe(x, packed, 5)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="the warp-specialized kernel is Hopper's")
@pytest.mark.parametrize("mode", ["plain", "words", "act-order"])
def test_wgmma_pack_x_writes_the_swizzled_image(device, mode):
    """The packing of x for the warp-specialized kernel against the image built in torch: without act-order in the
    MMA's own order (no index, 16-byte loads: what w4a16_linear runs), word by word through the index, and k by k
    (act-order); x whose alignment the mode cannot read is refused (w4a16_linear aligns x first)."""
    from test_kernels import wgmma_pack_x_image

    ext = build.load_extension()
    act = mode == "act-order"
    ql = testing.random_qlinear(1168, 2112, group_size=64, sym=False, act_order=act, dtype=torch.bfloat16, seed=29)
    packed = prepare(ql, device=device)
    index, words = packed.wgmma_x_pack_index()
    assert words is not act
    if mode == "plain":
        index = None
    for m in (1, 13, 16, 300):
        x = testing.random_activations(m, 2112, dtype=torch.bfloat16, seed=30 + m, device=device)
        xp = torch.full_like(x, float("nan"))
        ext.wgmma_pack_x(x, index, words, xp)
        assert torch.equal(xp, wgmma_pack_x_image(x, packed))
    shift = 4 if mode == "plain" else 1  # 8 bytes off for the 16-byte loads, 2 for the words
    odd = torch.empty(m * 2112 + shift, dtype=x.dtype, device=device)[shift:].view(m, 2112)
    if not act:
        with pytest.raises(RuntimeError, match="16-byte aligned" if index is None else "4-byte aligned"):
            ext.wgmma_pack_x(odd, index, words, xp)
    else:  # k by k any alignment does
        odd.copy_(x)
        ext.wgmma_pack_x(odd, index, words, xp)
        assert torch.equal(xp, wgmma_pack_x_image(x, packed))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="the warp-specialized kernel is Hopper's")
def test_x_image_feeds_the_ws_kernel(device):
    """ops.x_image, compiled by inductor for this GPU (as a compiled decode step makes it), writes the bits of the
    extension's packing of x; ops.w4a16_linear_image on it gives the bits of w4a16_linear on x where the dispatch
    runs the warp-specialized kernel (stream-K at 32 rows, the grid at 300), and refuses the rows where it does not
    and layers with act-order."""
    from test_kernels import wgmma_pack_x_image

    sms = ops.sm_count(torch.device(device))
    compiled = torch.compile(ops.x_image, dynamic=True)
    for act in (False, True):
        ql = testing.random_qlinear(8192, 4096, group_size=128, sym=act, act_order=act, dtype=torch.bfloat16, seed=31)
        packed = prepare(ql, device=device)
        assert ops.x_image_ready(packed) is not act
        for m in (32, 300, 8):
            x = testing.random_activations(m, 4096, dtype=torch.bfloat16, seed=32 + m, device=device)
            image = compiled(x)
            if act:
                with pytest.raises(UnsupportedError, match="no act-order"):
                    ops.w4a16_linear_image(image, packed)
                break
            assert torch.equal(image.view(m, 4096), wgmma_pack_x_image(x, packed))
            if not ops.wgmma_ws(m, 8192, 4096, sms):
                assert m == 8
                with pytest.raises(UnsupportedError, match="do not run the warp-specialized kernel"):
                    ops.w4a16_linear_image(image, packed)
                continue
            assert torch.equal(ops.w4a16_linear_image(image, packed), w4a16_linear(x, packed))
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="thread-block clusters need compute capability 9.0+")
def test_cluster_split_k_is_bit_equal(device):
    """Split-K through a thread-block cluster (distributed shared memory) adds the same fp32 sums in the same order
    as the workspace path, so both give the same bits: the decode kernel (plain and wk, every token-tile count) and
    the wgmma kernel (every instance), with a bias, on 65 tiles, split counts that are not powers of two, 16 (the
    largest cluster) and 32 (more than a cluster: the workspace path either way); eagerly and from a CUDA graph."""
    ql = testing.random_qlinear(1040, 2048, group_size=64, sym=False, act_order=False, dtype=torch.bfloat16, seed=15)
    packed = prepare(ql, device=device)
    w = reference_weight(packed, torch.bfloat16)
    bias = testing.random_activations(1, 1040, dtype=torch.bfloat16, seed=16, device=device)[0]
    hopper = torch.cuda.get_device_capability() == (9, 0)
    cases = [dict(backend="mma", staged=False, mt=mt, wk=wk) for mt in (1, 2, 4, 8) for wk in (False, True)
             if not (wk and mt == 8)]
    if hopper:
        cases += [dict(backend="wgmma", bt=bt, dense=dense) for bt, dense in ((64, False), (64, True), (128, True),
                                                                              (256, False))]
        cases += [dict(backend="wgmma", bt=bt, ws=True) for bt in (64, 128, 256)]
    for m in (1, 13, 40, 130):
        x = testing.random_activations(m, 2048, dtype=torch.bfloat16, seed=17 + m, device=device)
        for case in cases:
            for splits in (2, 3, 7, 16, 32):
                want = w4a16_linear(x, packed, bias, splits=splits, cluster=False, **case)
                got = w4a16_linear(x, packed, bias, splits=splits, cluster=True, **case)
                assert testing.relative_error(got, w, x, bias) <= testing.TOLERANCE[torch.bfloat16], (m, case, splits)
                assert torch.equal(got, want), (m, case, splits)
    x = testing.random_activations(16, 2048, dtype=torch.bfloat16, seed=18, device=device)
    want = w4a16_linear(x, packed, bias, backend="mma", staged=False, splits=8, cluster=False)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = w4a16_linear(x, packed, bias, backend="mma", staged=False, splits=8, cluster=True, pdl=True)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, want)


@pytest.mark.skipif(bool(torch.version.hip), reason="blocks of 8 warps are the CUDA decode kernel's")
@pytest.mark.parametrize("dtype,sym,group", [(torch.bfloat16, True, 128), (torch.float16, False, 32)],
                         ids=["bf16-sym-g128", "fp16-asym-g32"])
def test_eight_warps_sharing_a_tile(device, dtype, sym, group):
    """w4a16_linear(wk_warps=8): the decode kernel's blocks of 8 warps sharing a tile, within the kernels' tolerance of
    the product at M = 1-8, with a bias, unsplit and split (workspace and cluster: the same bits), for a plain layer and
    a gated pair, eagerly and as programmatic launches chained in a CUDA graph; elsewhere a clear error."""
    from quantkit.kernels.packing import interleave_glu

    k = 6144
    packed = prepare(testing.random_qlinear(1040, k, group_size=group, sym=sym, act_order=False, dtype=dtype, seed=90),
                     device=device)
    w = reference_weight(packed, dtype)
    bias = testing.random_activations(1, 1040, dtype=dtype, seed=91, device=device)[0]
    case = dict(backend="mma", staged=False, wk=True, wk_warps=8)
    for m in (1, 3, 8):
        x = testing.random_activations(m, k, dtype=dtype, seed=92 + m, device=device)
        for splits in (1, 2, 3, 7, 96):
            got = w4a16_linear(x, packed, bias, splits=splits, cluster=False, **case)
            assert testing.relative_error(got, w, x, bias) <= testing.TOLERANCE[dtype], (m, splits)
            assert torch.equal(w4a16_linear(x, packed, bias, splits=splits, cluster=True, **case), got), (m, splits)
    gate, up = (testing.random_qlinear(528, 2048, group_size=group, sym=sym, act_order=False, dtype=dtype, seed=95 + i)
                for i in range(2))
    pair = interleave_glu(prepare(gate, device=device), prepare(up, device=device))
    x = testing.random_activations(4, 2048, dtype=dtype, seed=97, device=device)
    for splits in (1, 3):
        got = w4a16_linear(x, pair, glu=True, splits=splits, **case)
        assert testing.glu_relative_error(got, reference_weight(pair, dtype), x, None) <= testing.GLU_TOLERANCE[dtype]
    layers = [prepare(testing.random_qlinear(1024, 1024, group_size=group, sym=sym, act_order=False, dtype=dtype,
                                             seed=98 + i), device=device) for i in range(3)]
    x = testing.random_activations(2, 1024, dtype=dtype, seed=101, device=device)

    def chain(pdl):
        y = x
        for _ in range(3):
            for layer in layers:
                y = w4a16_linear(y, layer, backend="mma", staged=False, wk=True, wk_warps=8, pdl=pdl, splits=2)
        return y

    assert_programmatic_chain(chain)
    with pytest.raises(UnsupportedError, match="wk_warps"):
        w4a16_linear(testing.random_activations(16, k, dtype=dtype, seed=102, device=device), packed, **case)


@pytest.mark.skipif(bool(torch.version.hip), reason="the gated pair's epilogue is the CUDA decode kernel's")
@pytest.mark.parametrize("dtype,sym,act", [(torch.bfloat16, False, False), (torch.float16, True, True)],
                         ids=["bf16-asym", "fp16-sym-act"])
def test_gated_pair_epilogue(device, dtype, sym, act):
    """w4a16_linear(glu=True) on a gated pair (packing.interleave_glu): the decode kernel's epilogue gives
    silu(gate) * up of its fp32 sums, rounded once, within the kernels' tolerance of the fp64 product of the
    dequantized weights, at every token-tile count, with a bias, unsplit, split through the workspace and through a
    cluster (the same bits both ways: the same sums in the same order), eagerly and as a programmatic launch in a CUDA
    graph; where the kernel cannot (65 rows) the torch ops after the layer give glu_interleaved's bits."""
    from quantkit.kernels.packing import interleave_glu

    inter, k = 528, 2048
    gate, up = (testing.random_qlinear(inter, k, group_size=64, sym=sym, act_order=act, dtype=dtype, seed=30 + i)
                for i in range(2))
    up = type(up)(**{**up.__dict__, "g_idx": gate.g_idx})  # one input: one act-order permutation
    pair = interleave_glu(prepare(gate, device=device), prepare(up, device=device))
    w = reference_weight(pair, dtype)
    bias = testing.random_activations(1, 2 * inter, dtype=dtype, seed=32, device=device)[0]

    def close(got, x):
        return testing.glu_relative_error(got, w, x, bias) <= testing.GLU_TOLERANCE[dtype]

    for m in (1, 3, 8, 13, 16, 32):
        x = testing.random_activations(m, k, dtype=dtype, seed=40 + m, device=device)
        assert ops.glu_in_kernel(m, pair, x) == (ops.kernel_path(m, pair, x)[0] == "mma")
        got = w4a16_linear(x, pair, bias, glu=True)
        assert got.shape == (m, inter) and close(got, x), m
        for splits in (1, 2, 3, 7, 16, 32):
            case = dict(backend="mma", staged=False, wk=True, splits=splits, glu=True)
            ws = w4a16_linear(x, pair, bias, cluster=False, **case)
            assert close(ws, x), (m, splits)
            assert torch.equal(w4a16_linear(x, pair, bias, cluster=True, **case), ws), (m, splits)
    x = testing.random_activations(65, k, dtype=dtype, seed=50, device=device)
    assert not ops.glu_in_kernel(65, pair, x)
    assert torch.equal(w4a16_linear(x, pair, bias, glu=True), ops.glu_interleaved(w4a16_linear(x, pair, bias)))
    x = testing.random_activations(4, k, dtype=dtype, seed=51, device=device)
    want = w4a16_linear(x, pair, bias, glu=True, backend="mma", staged=False, wk=True, splits=4)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = w4a16_linear(x, pair, bias, glu=True, backend="mma", staged=False, wk=True, splits=4, pdl=True)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, want)


@pytest.mark.skipif(bool(torch.version.hip), reason="the rotary epilogue is the CUDA decode kernel's")
@pytest.mark.parametrize("dtype,sym,act,heads,kv,d", [(torch.bfloat16, True, False, 32, 8, 128),
                                                      (torch.float16, False, True, 12, 4, 64)],
                         ids=["bf16-sym-32x8x128", "fp16-asym-act-12x4x64"])
def test_rope_epilogue(device, monkeypatch, dtype, sym, act, heads, kv, d):
    """w4a16_rope_qkv on a fused q/k/v in rope order (packing.interleave_rope): the decode kernel's epilogue (one
    token tile, its warps sharing a tile, blocks of 8 and of 4) gives rope_rows's q and caches from the same kernel's
    plain product, the rotation within one rounding (fused multiply-adds), v's cache rows bit for bit, every other cache
    position unchanged, a bias, one cos/sin row for every sequence or one each, eagerly and as a programmatic launch in
    a CUDA graph replayed at the next position, q alone at a position outside the cache; at 9 rows (two token tiles)
    it runs rope_rows after the layer."""
    from quantkit.kernels.packing import interleave_rope

    k, length = 1024, 40
    parts = [testing.random_qlinear(n * d, k, group_size=64, sym=sym, act_order=act, dtype=dtype, seed=60 + i)
             for i, n in enumerate((heads, kv, kv))]
    parts = [type(p)(**{**p.__dict__, "g_idx": parts[0].g_idx}) for p in parts]  # one input: one permutation
    layer = interleave_rope([prepare(p, device=device) for p in parts], heads, kv, d)
    n = layer.out_features
    bias = testing.random_activations(1, n, dtype=dtype, seed=63, device=device)[0]
    gen = torch.Generator(device="cpu").manual_seed(64)
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    for warps in (8, 4):
        monkeypatch.setattr(ops, "STREAM_WK_WARPS_ONE_TILE", warps)
        for m in (1, 3, 8, 9):
            x = testing.random_activations(m, k, dtype=dtype, seed=70 + m, device=device)
            angle = torch.rand(m if m % 2 else 1, d // 2, generator=gen) * 6.3
            cos, sin = (torch.cat([f(angle)] * 2, -1).to(device, dtype) for f in (torch.cos, torch.sin))
            caches = [torch.randn(m, kv, length, d, generator=gen).to(device, dtype) for _ in range(2)]
            position = torch.tensor([length - 3], device=device)
            assert (ops.rope_in_kernel(m, layer, x) is not None) == (m <= 8)
            want_k, want_v = (c.clone() for c in caches)
            y = w4a16_linear(x, layer, bias)  # the same kernel's product: the rotation alone differs
            want = ops.rope_rows(y, cos, sin, want_k, want_v, position, heads)
            got_k, got_v = (c.clone() for c in caches)
            got = ops.w4a16_rope_qkv(x[:, None], layer, bias, cos[:, None], sin[:, None], got_k, got_v, position,
                                     heads)
            assert got.shape == (m, 1, heads * d)
            torch.testing.assert_close(got[:, 0].float(), want.float(), rtol=ulp, atol=1e-3)
            torch.testing.assert_close(got_k.float(), want_k.float(), rtol=ulp, atol=1e-3)
            assert torch.equal(got_v, want_v), (warps, m)
            others = torch.arange(length, device=device) != position
            assert torch.equal(got_k[:, :, others], caches[0][:, :, others]), (warps, m)
    x = testing.random_activations(2, k, dtype=dtype, seed=80, device=device)
    q = torch.empty(2, heads * d, dtype=dtype, device=device)
    graph, position = torch.cuda.CUDAGraph(), torch.tensor([5], device=device)
    with torch.cuda.graph(graph):
        q.copy_(ops.w4a16_rope_qkv(x, layer, bias, cos[:1], sin[:1], got_k[:2], got_v[:2], position, heads,
                                   pdl=True))
    position.fill_(6)
    graph.replay()
    torch.cuda.synchronize()
    want_k, want_v = got_k[:2].clone(), got_v[:2].clone()
    want = ops.w4a16_rope_qkv(x, layer, bias, cos[:1], sin[:1], want_k, want_v, position, heads)
    assert torch.equal(q, want) and torch.equal(got_k[:2, :, 6], want_k[:, :, 6])
    kept_k, kept_v = got_k.clone(), got_v.clone()  # a position outside the cache: q alone
    outside = ops.w4a16_rope_qkv(x, layer, bias, cos[:1], sin[:1], got_k[:2], got_v[:2],
                                 torch.tensor([length], device=device), heads)
    assert torch.equal(outside, want) and torch.equal(got_k, kept_k) and torch.equal(got_v, kept_v)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.version.hip is not None,
                    reason="the decode kernel's fold is NVIDIA's")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_fold_in_the_decode_kernel(device, dtype):
    """ops.Fold in the decode kernel (QkResidualNorm) on Llama-3-8B's hidden size and an odd one: the residual add
    and the next norm's input bit for bit those of torch's ops on the same kernel's plain output, the RMSNorm's scale
    within FOLD_TOLERANCE of that output scaled after it (a gated pair too), from h's row or from its sums of squares
    (ops.Fold.ss), and the stream's sums of squares within SUM_SQUARES_RTOL of torch's, at 1 to 16 rows, one token
    tile or several, the warps sharing a tile or not (in blocks of 8 and of 4 at one token tile), unsplit, through a
    cluster and the workspace, eagerly and as a programmatic launch in a CUDA graph (two folded layers, the sums of
    squares from one to the next, too); at 64 rows, whichever kernel the dispatch takes (the fold after it where it
    is not the decode kernel), within the tolerance of the reference's."""
    from quantkit.kernels import selfcheck
    from quantkit.kernels.ops import Fold, add_residual, glu_interleaved, rms_scale, sum_squares
    from quantkit.kernels.packing import interleave_glu

    tol = testing.FOLD_TOLERANCE[dtype]
    for n, k, g, act in ((4096, 4096, 128, False), (576, 1536, 64, True)):
        packed = prepare(testing.random_qlinear(n, k, group_size=g, sym=False, act_order=act, dtype=dtype, seed=n),
                         device=device)
        pair = interleave_glu(*(prepare(testing.random_qlinear(528, k, group_size=g, sym=True, act_order=False,
                                                               dtype=dtype, seed=n + 1 + i), device=device)
                                for i in range(2)))
        bias = testing.random_activations(1, n, dtype=dtype, seed=n + 3, device=device)[0]
        next_w = testing.random_activations(1, n, dtype=dtype, seed=n + 4, device=device)[0]
        for m in (1, 2, 3, 8, 16):
            x, h = (testing.random_activations(m, k, dtype=dtype, seed=n + 10 * m + i, device=device) for i in (5, 6))
            residual = testing.random_activations(m, n, dtype=dtype, seed=n + 10 * m + 7, device=device)
            for how in ({}, {"splits": 1}, {"splits": 2, "cluster": True}, {"splits": 32, "cluster": False},
                        {"wk_warps": 4}, {"wk_warps": 4, "splits": 2, "cluster": True}, {"wk": False},
                        {"mt": 2, "wk": False}):
                if how.get("wk_warps") and m > 8:
                    continue  # (4 is the default there)
                case = dict(backend="mma", staged=False, **how)
                plain = w4a16_linear(x, packed, bias, **case)  # the fold's launch (ops.mma_plan)
                got = w4a16_linear(x, packed, bias, fold=Fold(residual=residual, next_w=next_w), **case)
                assert torch.equal(got, add_residual(plain, residual, next_w)), (n, m, how)
                assert torch.equal(w4a16_linear(x, packed, bias, fold=Fold(residual=residual), **case), got[0])
                ss = torch.full((m, n // 16), float("nan"), device=device)  # the stream's sums of squares too
                assert torch.equal(w4a16_linear(x, packed, bias, fold=Fold(residual=residual, ss=ss), **case), got[0])
                assert torch.allclose(ss, sum_squares(got[0]), rtol=selfcheck.SUM_SQUARES_RTOL, atol=0), (n, m, how)
                rows = w4a16_linear(x, packed, None, **case).float()
                for ss in (None, sum_squares(h)):  # the row of h read, or its sums of squares given
                    got = w4a16_linear(x, packed, bias, fold=Fold(rms=h, eps=1e-5, ss=ss), **case)
                    assert testing.error_against(got, rows * rms_scale(h, 1e-5) + bias.float()) <= tol, (n, m, how)
                if how.get("wk", True):
                    rows = w4a16_linear(h, pair, None, **case).float()
                    for ss in (None, sum_squares(x)):
                        got = w4a16_linear(h, pair, None, glu=True, fold=Fold(rms=x, eps=1e-6, ss=ss), **case)
                        err = testing.error_against(got, glu_interleaved(rows * rms_scale(x, 1e-6)))
                        assert err <= tol, (n, m, how, ss is None)
        x, h = (testing.random_activations(64, k, dtype=dtype, seed=n + i, device=device) for i in (8, 9))
        want = w4a16_linear(x, packed, bias, backend="reference", fold=Fold(rms=h, eps=1e-5))
        got = w4a16_linear(x, packed, bias, fold=Fold(rms=h, eps=1e-5))
        assert testing.error_against(got, want.double()) <= tol
    x, h = (testing.random_activations(1, k, dtype=dtype, seed=i, device=device) for i in (60, 61))
    residual = testing.random_activations(1, n, dtype=dtype, seed=62, device=device)
    fold = Fold(rms=h, eps=1e-5, residual=residual, next_w=next_w)
    want = w4a16_linear(x, packed, bias, backend="mma", staged=False, fold=fold)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = w4a16_linear(x, packed, bias, backend="mma", staged=False, fold=fold, pdl=True)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, want)
    # a folded layer writing the stream's sums of squares, the next one adding them up, as programmatic launches
    square = prepare(testing.random_qlinear(k, k, group_size=g, sym=True, act_order=False, dtype=dtype, seed=63),
                     device=device)
    res, w = (testing.random_activations(1, k, dtype=dtype, seed=i, device=device) for i in (64, 65))
    ss = torch.empty(1, k // 16, device=device)

    def pair_of_layers(pdl):
        hx = w4a16_linear(x, square, None, backend="mma", staged=False, pdl=pdl,
                          fold=Fold(residual=res, next_w=w[0], ss=ss))
        return w4a16_linear(hx[1], packed, bias, backend="mma", staged=False, pdl=pdl,
                            fold=Fold(rms=hx[0], eps=1e-5, ss=ss)), hx[0]

    want, stream = pair_of_layers(False)
    rows = w4a16_linear(w4a16_linear(x, square, None, fold=Fold(residual=res, next_w=w[0]))[1], packed, None).float()
    assert testing.error_against(want, rows * rms_scale(stream, 1e-5) + bias.float()) <= tol
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got, _ = pair_of_layers(True)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, want)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="the wgmma kernel runs on Hopper (compute capability 9.0)")
@pytest.mark.parametrize("dtype,sym,act", [(torch.bfloat16, True, False), (torch.float16, False, True)],
                         ids=["bf16-sym", "fp16-asym-act"])
def test_gated_pair_epilogue_in_the_ws_kernel(device, monkeypatch, dtype, sym, act):
    """With ops.GLU_WS, the warp-specialized kernel writes silu(gate) * up itself: at every tile (16 to 256 tokens a
    block), under stream-K, the grid and the grid's split-K through the workspace (a cluster is not taken with it),
    with a bias and act-order, within the gated pair's tolerance of the fp64 product; its image of x too; and with
    GLU_WS off the same call gives glu_interleaved's bits of the plain kernel."""
    from quantkit.kernels.packing import interleave_glu

    inter, k = 592, 2048  # 74 row tiles of 16: the last 128-row block part empty
    gate, up = (testing.random_qlinear(inter, k, group_size=64, sym=sym, act_order=act, dtype=dtype, seed=60 + i)
                for i in range(2))
    up = type(up)(**{**up.__dict__, "g_idx": gate.g_idx})
    pair = interleave_glu(prepare(gate, device=device), prepare(up, device=device))
    w = reference_weight(pair, dtype)
    bias = testing.random_activations(1, 2 * inter, dtype=dtype, seed=62, device=device)[0]

    def close(got, x):
        return testing.glu_relative_error(got, w, x, bias) <= testing.GLU_TOLERANCE[dtype]

    monkeypatch.setattr(ops, "GLU_WS", True)
    for m in (17, 64, 300):
        x = testing.random_activations(m, k, dtype=dtype, seed=63 + m, device=device)
        for bt in (16, 32, 64, 128, 256):
            for how in (dict(stream_k=True), dict(stream_k=False), dict(stream_k=False, splits=3, cluster=False)):
                if bt == 256 and "splits" in how:
                    continue  # 256 tokens a block take no split-K
                got = w4a16_linear(x, pair, bias, backend="wgmma", ws=True, bt=bt, glu=True, **how)
                assert got.shape == (m, inter) and close(got, x), (m, bt, how)
    if not act:
        x = testing.random_activations(40, k, dtype=dtype, seed=64, device=device)
        monkeypatch.setattr(ops, "wgmma_ws", lambda m, n, k, sms=132: True)  # the image's check, for this small layer
        monkeypatch.setattr(ops, "x_image_ready", lambda p: True)
        assert close(ops.w4a16_linear_image(ops.x_image(x), pair, bias, glu=True), x)
    monkeypatch.setattr(ops, "GLU_WS", False)
    x = testing.random_activations(64, k, dtype=dtype, seed=65, device=device)
    plain = w4a16_linear(x, pair, bias, backend="wgmma", ws=True, bt=64)
    assert torch.equal(w4a16_linear(x, pair, bias, backend="wgmma", ws=True, bt=64, glu=True),
                       ops.glu_interleaved(plain))


def test_cuda_graph_capture(device):
    ql = testing.random_qlinear(512, 1024, group_size=32, sym=True, act_order=True, dtype=torch.float16, seed=9)
    packed = prepare(ql, device=device)
    x = testing.random_activations(4, 1024, dtype=torch.float16, seed=10, device=device)
    y0 = w4a16_linear(x, packed)  # warm-up: build, self-check, workspace
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = w4a16_linear(x, packed)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, y0)


@pytest.mark.skipif(bool(torch.version.hip), reason="the L2 prefetch is CUDA's")
def test_l2_prefetch_requests_and_writes_nothing(device, monkeypatch):
    """ops.l2_prefetch requests the scales and the first max_bytes (rounded down to 16) of the weights, in one
    launch that also records into a CUDA graph; w4a16_linear(warm=...) gives the same bits as without, whether the
    decode kernel's blocks request the next layer (every token-tile count, split-K in and out of a cluster; its own
    weights read evict-first or not) or a launch of its own does (L2_PREFETCH_IN_KERNEL off; other paths); nothing is
    written to either layer."""
    ql = testing.random_qlinear(1040, 1024, group_size=64, sym=False, act_order=False, dtype=torch.bfloat16, seed=21)
    packed = prepare(ql, device=device)
    nxt = prepare(testing.random_qlinear(2048, 1024, group_size=32, sym=True, act_order=False, dtype=torch.bfloat16,
                                         seed=23), device=device)
    assert not packed.kernel_reason and not nxt.kernel_reason
    tensors = [t for p in (packed, nxt) for t in (p.mma_meta(torch.bfloat16), p.mma_weight)]
    before = [t.clone() for t in tensors]
    meta, w = tensors[2], tensors[3]
    meta_bytes, w_bytes = meta.numel() * meta.element_size(), w.numel() * w.element_size()
    assert ops.l2_prefetch(nxt, torch.bfloat16) == meta_bytes + w_bytes
    assert ops.l2_prefetch(nxt, torch.bfloat16, 100_005) == meta_bytes + 100_000
    assert ops.l2_prefetch(nxt, torch.bfloat16, 0) == meta_bytes
    for m in (1, 3, 16, 32, 64):
        x = testing.random_activations(m, 1024, dtype=torch.bfloat16, seed=22 + m, device=device)
        for in_kernel, evict_first in ((True, False), (True, True), (False, False)):
            monkeypatch.setattr(ops, "L2_PREFETCH_IN_KERNEL", in_kernel)
            monkeypatch.setattr(ops, "L2_PREFETCH_EVICT_FIRST", evict_first)
            # the prefetching blocks have STREAM_WK_WARPS warps: without it, blocks of as many for the same bits
            warps = ops.STREAM_WK_WARPS if in_kernel else None
            y0 = w4a16_linear(x, packed, wk_warps=warps)
            for splits, cluster in ((None, None), (4, True), (4, False)):
                if m > ops.STREAM_MAX_M and splits:
                    continue
                assert torch.equal(w4a16_linear(x, packed, warm=(nxt, 1 << 20), splits=splits, cluster=cluster),
                                   w4a16_linear(x, packed, splits=splits, cluster=cluster, wk_warps=warps)), (
                    m, in_kernel, evict_first, splits)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                ops.l2_prefetch(nxt, torch.bfloat16, 1 << 20)
                y = w4a16_linear(x, packed, warm=(nxt, None))
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(y, y0), (m, in_kernel, evict_first)
    assert all(torch.equal(t, b) for t, b in zip(tensors, before))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="programmatic dependent launch needs compute capability 9.0+")
@pytest.mark.parametrize("m", [1, 4, 16, 32])
def test_programmatic_launch_chain(device, m):
    """pdl=True: each streaming launch overlaps the end of the one before and reads its output only after
    griddepcontrol.wait. A chain of layers, each fed the previous output and sharing the split-K workspace, eagerly
    and replayed from a CUDA graph, must give exactly what the same chain gives without it."""
    layers = [prepare(testing.random_qlinear(1024, 1024, group_size=128, sym=s, act_order=False, dtype=torch.bfloat16,
                                             seed=20 + i), device=device) for i, s in enumerate((True, False, True))]
    x = testing.random_activations(m, 1024, dtype=torch.bfloat16, seed=30, device=device)

    def chain(pdl):
        y = x
        for _ in range(3):
            for packed in layers:  # back to back, no other kernel between (values stay O(1) with these layers)
                y = w4a16_linear(y, packed, backend="mma", staged=False, pdl=pdl, splits=4)
        return y

    assert_programmatic_chain(chain)


def assert_programmatic_chain(chain):
    """chain(pdl) with programmatic launches gives exactly chain(False), eagerly and replayed from a CUDA graph (the
    same kernels without them, themselves checked against the reference above)."""
    want = chain(False)
    assert torch.isfinite(want).all() and want.abs().mean() > 1e-3
    assert torch.equal(chain(True), want)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = chain(True)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(got, want)


@pytest.mark.skipif(bool(torch.version.hip), reason="the one-launch MLP is the CUDA decode kernel's")
@pytest.mark.parametrize("dtype,sym,m,splits", [(torch.bfloat16, True, 1, None), (torch.bfloat16, True, 8, 5),
                                                (torch.float16, False, 3, None), (torch.float16, False, 1, 1)],
                         ids=["bf16-sym-m1", "bf16-sym-m8-split5", "fp16-asym-m3", "fp16-asym-m1-unsplit"])
def test_mlp_in_one_launch(device, monkeypatch, dtype, sym, m, splits):
    """ops.w4a16_mlp: a gated pair and its down projection in one launch (csrc qk_mma_mlp), its down blocks waiting
    for the pair tiles of their split, on Llama-3-8B's hidden size with 4352 intermediate features (the pair's 544
    tiles unsplit, as mlp_at asks; down in the rule's 2 splits, 5 uneven ones or none): bit for bit
    the two layers launched one after the other, near the reference; again and again, eagerly, as programmatic
    launches back to back and from a CUDA graph (its counters are left zero for the next launch); and the two
    launches with QUANTKIT_FUSED_MLP off (the default)."""
    monkeypatch.setattr(ops, "FUSED_MLP", True)  # off by default (measured slower)
    inter, hidden = 4352, 4096
    gate, up, down = (prepare(testing.random_qlinear(n, k, group_size=128, sym=sym, act_order=False, dtype=dtype,
                                                     seed=60 + i), device=device)
                      for i, (n, k) in enumerate(((inter, hidden), (inter, hidden), (hidden, inter))))
    pair = packing.interleave_glu(gate, up)
    assert ops.mlp_ready(pair, down) and ops.mlp_at(m, pair, ops.sm_count(torch.device(device)))
    x = testing.random_activations(m, hidden, dtype=dtype, seed=70, device=device)
    two = dict(backend="mma", wk_warps=ops.STREAM_WK_WARPS)  # the one launch's blocks' warps, for the same bits
    mid = ops.w4a16_linear(x, pair, glu=True, splits=1, **two)
    want = ops.w4a16_linear(mid, down, splits=splits, cluster=False, **two)
    assert testing.relative_error(want, reference_weight(down, dtype), mid, None) <= testing.TOLERANCE[dtype]

    def chain(pdl):
        y = x
        for _ in range(2):  # back to back: the second launch reuses the counters the first left
            y = ops.w4a16_mlp(y, pair, down, backend="kernel", splits=splits, pdl=pdl)
        return y

    assert torch.equal(ops.w4a16_mlp(x, pair, down, backend="kernel", splits=splits), want)
    assert_programmatic_chain(chain)
    monkeypatch.setattr(ops, "FUSED_MLP", False)
    assert not ops.mlp_at(m, pair, ops.sm_count(torch.device(device)))
    apart = ops.w4a16_linear(ops.w4a16_linear(x, pair, backend="kernel", glu=True), down, backend="kernel",
                             splits=splits)
    assert torch.equal(ops.w4a16_mlp(x, pair, down, backend="kernel", splits=splits), apart)
    assert ops.STREAM_WK_WARPS_ONE_TILE != ops.STREAM_WK_WARPS or torch.equal(apart, want)


@pytest.mark.parametrize("plan", [dict(bt=64, splits=2), dict(bt=256, stream_k=True), dict(bt=128)])
def test_ws_programmatic_launch_chain(device, plan):
    """The warp-specialized kernel as a programmatic dependent launch of the packing of x (ops.WS_PDL): its blocks
    request their first weights before that kernel ends and read x only after it. A chain of layers fed each other's
    outputs (the grid, its cluster split-K, stream-K and its workspace shared), eagerly and replayed from a CUDA graph,
    must give exactly what the same chain gives with the two kernels one after the other."""
    if not ops.has_wgmma(torch.device(device)):
        pytest.skip("the warp-specialized kernel needs a Hopper GPU")
    layers = [prepare(testing.random_qlinear(1024, 1024, group_size=128, sym=s, act_order=a, dtype=torch.bfloat16,
                                             seed=40 + i), device=device)
              for i, (s, a) in enumerate(((True, False), (False, True), (True, False)))]
    x = testing.random_activations(300, 1024, dtype=torch.bfloat16, seed=50, device=device)

    def chain(pdl):
        y = x
        for _ in range(3):
            for packed in layers:
                y = w4a16_linear(y, packed, backend="wgmma", ws=True, pdl=pdl, **plan)
        return y

    assert_programmatic_chain(chain)
