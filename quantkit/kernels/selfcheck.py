"""The kernels check themselves against the reference on the device they run on, before any result is used:
at first build (w4a16_linear with backend auto/kernel), and by the benchmark before it times anything.

Three sets of cases: every kernel path forced on small layers (CASES), the dispatch itself (backend "kernel") on
two layers of 2^25 weights (DISPATCH_CASES), where it takes what the small layers never reach: on Hopper the
warp-specialized kernel at every tile (16 to 256 tokens a block) under stream-K, cluster split-K and the plain grid,
and everywhere the decode kernel on deep K, with as many splits as a real layer gets; and on NVIDIA a gated pair
through the decode kernel's SiLU-and-multiply epilogue (GLU_CASE), a decoder layer's residual add and RMSNorm
folded into the decode kernel (FOLD_CASE), a decode step's gated MLP in one launch (MLP_CASE) and a decode step's
rotary embedding and cache write in the q/k/v kernel's epilogue (ROPE_CASE)."""

from __future__ import annotations

import logging

import torch

from quantkit.errors import QuantkitError
from quantkit.kernels import testing
from quantkit.kernels.packing import prepare
from quantkit.kernels.reference import reference_weight

log = logging.getLogger(__name__)


class KernelSelfCheckError(QuantkitError):
    """A W4A16 kernel disagreed with the pure-torch reference on this device."""


# (M, N, K, group, sym, act_order): decode and prefill sizes, asymmetric, act-order, N/K off powers of two.
CASES = (
    (1, 192, 576, 32, True, False),
    (3, 320, 1536, 64, False, True),
    (8, 2112, 1152, 128, True, False),
    (16, 256, 640, 32, False, False),
    (77, 576, 1536, 128, True, True),
    (300, 1536, 576, 64, False, False),
)

# (N, K, group, sym, act_order, dtype, Ms): the paths the dispatch takes there on an H100 / H200 (132
# multiprocessors; tests/test_kernels.py checks them against ops' plan): 2048x16384 at M = 1 / 8 the decode kernel;
# 16 / 31 / 48 / 77 / 200 the warp-specialized kernel's stream-K at 16 / 32 / 64 / 128 / 256 tokens a block, 640 its
# grid of 64, 1024 two cluster splits of 256; 4096x8192 at M = 17 stream-K at 32, 64 / 128 / 256 three cluster splits
# of 64 / 128 / 256, 1024 the grid of 256.
DISPATCH_CASES = (
    (2048, 16384, 128, True, False, torch.bfloat16, (1, 8, 16, 31, 48, 77, 200, 640, 1024)),
    (4096, 8192, 32, False, True, torch.float16, (3, 17, 64, 128, 256, 1024)),
)

# (intermediate, K, group, sym, Ms): a gated pair (packing.interleave_glu) whose SiLU and multiply the decode kernel's
# epilogue applies at each M (1 to 32: one, two and four token tiles), unsplit, through a cluster and the workspace.
GLU_CASE = (272, 1536, 64, False, (1, 8, 16, 32))
# The same through the warp-specialized kernel's epilogue where ops.GLU_WS holds: a pair of 2^25 weights at M where the
# dispatch takes that kernel on an H100 / H200 (stream-K and the grid, 32 to 256 tokens a block).
GLU_WS_CASE = (1024, 16384, 128, True, (31, 48, 77, 200, 640))

# (N, K, group, sym, act_order, Ms): a decoder layer's residual add and RMSNorm folded into the decode kernel
# (ops.Fold) at each M, unsplit, through a cluster and the workspace: the stream and the next norm's input against the
# same kernel's plain output added in torch ops (bit for bit), and the norm's scale against the plain output scaled
# after it; a gated pair (GLU_CASE's) with the scale too.
FOLD_CASE = (320, 1536, 64, False, True, (1, 3, 8))
# The decode kernel's sums of squares of the stream it writes (ops.Fold.ss) against torch's of its output: fp32 sums
# of 16 squares in another order, a few ulp apart.
SUM_SQUARES_RTOL = 1e-5
# (intermediate, hidden, group, sym, Ms): a decode step's gated MLP in one launch (ops.w4a16_mlp) at each M where it
# runs (ops.mlp_at), down unsplit, in 3 uneven splits and in the rule's: bit for bit the gated pair then down, launched
# one after the other (the kernels the other cases check against the reference).
MLP_CASE = (320, 576, 64, False, (1, 3, 8))
# (heads, kv heads, head_dim, K, group, sym, Ms): a fused q/k/v in rope order (packing.interleave_rope) whose decode
# kernel applies a decode step's rotary embedding and cache write in its epilogue (ops.w4a16_rope_qkv) at each M,
# against ops.rope_rows of the same kernel's plain product: q and k within a rounding of the 16-bit result (the
# rotation's fused multiply-adds), v bit for bit, the other cache positions unchanged.
ROPE_CASE = (8, 2, 64, 576, 64, True, (1, 3, 8))
_checked: set = set()


def backends_for(m: int, device: torch.device | None = None) -> tuple[str, ...]:
    from quantkit.kernels.ops import DOT2_MAX_M, has_wgmma  # late: ops imports us

    if torch.version.hip:
        return ("dot2",) if m <= DOT2_MAX_M else ("wmma",)
    hopper = device is not None and has_wgmma(device)
    return (("mma", "dequant") + (("dot2",) if m <= DOT2_MAX_M else ()) + (("staged",) if m >= 32 else ())
            + (("wgmma",) if hopper else ()))


def _check(packed, w: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, path: str, **how) -> None:
    """One call of w4a16_linear(x, packed, bias, **how), which runs path, against the reference weight w."""
    from quantkit.kernels.ops import w4a16_linear  # late: ops calls us

    m, n, dtype = x.shape[0], packed.out_features, x.dtype
    torch.full((m * n * 2,), float("nan"), device=x.device)  # poison what the allocator hands out next
    err = testing.relative_error(w4a16_linear(x, packed, bias, **how), w, x, bias)
    tol = testing.tolerance(dtype, backend=path, k=packed.in_features, group_size=packed.group_size)
    if not err <= tol:
        act = packed.perm is not None
        raise KernelSelfCheckError(
            f"W4A16 kernel '{path}' disagrees with the reference on {x.device} (M={m} N={n} K={packed.in_features} "
            f"group={packed.group_size} sym={packed.sym} act_order={act} {dtype}): relative error "
            f"{err:.2e} > {tol:.1e}; do not use its results, report this with the GPU name"
        )


def _check_glu(device: torch.device, dtype: torch.dtype, seed: int, case: tuple) -> None:
    """A gated pair (GLU_CASE, GLU_WS_CASE) against silu(gate) * up of the fp64 products of the reference weights
    (testing.glu_relative_error, GLU_TOLERANCE), at each M where the kernel applies them itself."""
    from quantkit.kernels.ops import glu_in_kernel, kernel_path, w4a16_linear  # late: ops calls us
    from quantkit.kernels.packing import interleave_glu

    inter, k, g, sym, ms = case
    pair = interleave_glu(*(prepare(testing.random_qlinear(inter, k, group_size=g, sym=sym, act_order=False,
                                                           dtype=dtype, seed=seed + i), device=device, layouts=("mma",))
                            for i in range(2)))
    w = reference_weight(pair, dtype)
    bias = testing.random_activations(1, 2 * inter, dtype=dtype, seed=200 + seed, device=device)[0]
    tol = testing.GLU_TOLERANCE[dtype]
    for m in ms:
        x = testing.random_activations(m, k, dtype=dtype, seed=100 * seed + m, device=device)
        if not glu_in_kernel(m, pair, x):
            continue
        path = kernel_path(m, pair, x)[0]
        # the decode kernel: the rule's split, a cluster of two, the workspace; the warp-specialized one: its plan
        for splits in (None, 2, 32) if path == "mma" else (None,):
            got = w4a16_linear(x, pair, bias, backend="kernel", glu=True, splits=splits)
            err = testing.glu_relative_error(got, w, x, bias)
            if not err <= tol:
                raise KernelSelfCheckError(
                    f"W4A16 kernel '{path}' with the gated pair's epilogue disagrees with the reference on {device} (M={m} "
                    f"N={2 * inter} K={k} group={g} sym={sym} splits={splits} {dtype}): relative error {err:.2e} > "
                    f"{tol:.1e}; do not use its results, report this with the GPU name")


def _fold_error(what: str, device, m: int, n: int, k: int, splits, dtype, detail: str) -> KernelSelfCheckError:
    return KernelSelfCheckError(
        f"W4A16 kernel 'mma' with the folded {what} disagrees with its plain output on {device} (M={m} N={n} K={k} "
        f"splits={splits} {dtype}): {detail}; do not use its results, report this with the GPU name")


def _check_fold(device: torch.device, dtype: torch.dtype, seed: int) -> None:
    """FOLD_CASE: the decode kernel with ops.Fold against its own plain output with the fold applied after it."""
    from quantkit.kernels.ops import (Fold, add_residual, glu_interleaved, rms_scale, sum_squares,  # late: ops calls us
                                      w4a16_linear)
    from quantkit.kernels.packing import interleave_glu

    n, k, g, sym, act, ms = FOLD_CASE
    packed = prepare(testing.random_qlinear(n, k, group_size=g, sym=sym, act_order=act, dtype=dtype, seed=seed),
                     device=device, layouts=("mma",))
    inter, gk, gg, gsym, _ = GLU_CASE
    pair = interleave_glu(*(prepare(testing.random_qlinear(inter, gk, group_size=gg, sym=gsym, act_order=False,
                                                           dtype=dtype, seed=seed + i), device=device, layouts=("mma",))
                            for i in range(2)))
    bias = testing.random_activations(1, n, dtype=dtype, seed=300 + seed, device=device)[0]
    next_w = testing.random_activations(1, n, dtype=dtype, seed=301 + seed, device=device)[0]
    tol = testing.FOLD_TOLERANCE[dtype]
    for m in ms:
        x = testing.random_activations(m, k, dtype=dtype, seed=400 + m, device=device)
        h = testing.random_activations(m, k, dtype=dtype, seed=500 + m, device=device)
        residual = testing.random_activations(m, n, dtype=dtype, seed=600 + m, device=device)
        hx = testing.random_activations(m, gk, dtype=dtype, seed=700 + m, device=device)
        for splits in (None, 2, 32):
            plain = w4a16_linear(x, packed, bias, backend="mma", splits=splits)  # the fold's launch (ops.mma_plan)
            ss = torch.full((m, n // 16), float("nan"), device=device)
            got = w4a16_linear(x, packed, bias, backend="mma", splits=splits,
                               fold=Fold(residual=residual, next_w=next_w, ss=ss))
            if not torch.equal(got, add_residual(plain, residual, next_w)):
                raise _fold_error("residual add", device, m, n, k, splits, dtype, "not bit for bit")
            if not torch.allclose(ss, sum_squares(got[0]), rtol=SUM_SQUARES_RTOL, atol=0):
                raise _fold_error("stream's sums of squares", device, m, n, k, splits, dtype, "not those of its output")
            rows = w4a16_linear(x, packed, None, backend="mma", splits=splits).float()
            for ss in (None, sum_squares(h)):  # h's row read by the kernel, or its sums of squares given
                got = w4a16_linear(x, packed, bias, backend="mma", splits=splits, fold=Fold(rms=h, eps=1e-5, ss=ss))
                err = testing.error_against(got, rows * rms_scale(h, 1e-5) + bias.float())
                if not err <= tol:
                    raise _fold_error("RMSNorm scale", device, m, n, k, splits, dtype,
                                      f"relative error {err:.2e} > {tol:.1e}{'' if ss is None else ' (from ss)'}")
            rows = w4a16_linear(hx, pair, None, backend="mma", splits=splits).float()
            for ss in (None, sum_squares(hx)):
                got = w4a16_linear(hx, pair, None, backend="mma", splits=splits, glu=True,
                                   fold=Fold(rms=hx, eps=1e-5, ss=ss))
                err = testing.error_against(got, glu_interleaved(rows * rms_scale(hx, 1e-5)))
                if not err <= tol:
                    raise _fold_error("RMSNorm scale of a gated pair", device, m, 2 * inter, gk, splits, dtype,
                                      f"relative error {err:.2e} > {tol:.1e}{'' if ss is None else ' (from ss)'}")


def _check_mlp(device: torch.device, dtype: torch.dtype, seed: int) -> None:
    """MLP_CASE: the one-launch MLP against the gated pair and down one after the other."""
    from quantkit.kernels.ops import STREAM_WK_WARPS, mlp_at, sm_count, w4a16_linear, w4a16_mlp  # late: ops calls us
    from quantkit.kernels.packing import interleave_glu

    inter, hidden, g, sym, ms = MLP_CASE
    gate, up, down = (prepare(testing.random_qlinear(n, k, group_size=g, sym=sym, act_order=False, dtype=dtype,
                                                     seed=seed + i), device=device, layouts=("mma",))
                      for i, (n, k) in enumerate(((inter, hidden), (inter, hidden), (hidden, inter))))
    pair = interleave_glu(gate, up)
    for m in ms:
        if not mlp_at(m, pair, sm_count(device)):
            continue
        x = testing.random_activations(m, hidden, dtype=dtype, seed=800 + m, device=device)
        # the two launches in blocks of STREAM_WK_WARPS warps, as the one launch's; the pair's the same for every split
        two = dict(backend="mma", wk_warps=STREAM_WK_WARPS)
        mid = w4a16_linear(x, pair, glu=True, splits=1, **two)
        for splits in (1, 3, None):
            got = w4a16_mlp(x, pair, down, backend="kernel", splits=splits)
            if not torch.equal(got, w4a16_linear(mid, down, splits=splits, cluster=False, **two)):
                raise KernelSelfCheckError(
                    f"W4A16 kernel 'mma' with the gated MLP in one launch disagrees with its two launches on {device} "
                    f"(M={m} intermediate={inter} hidden={hidden} group={g} sym={sym} splits={splits} {dtype}): "
                    f"not bit for bit; do not use its results, report this with the GPU name")


def _check_rope(device: torch.device, dtype: torch.dtype, seed: int) -> None:
    """ROPE_CASE: the rotary epilogue against rope_rows of the plain product, where rope_at holds."""
    from quantkit.kernels.ops import rope_at, rope_rows, w4a16_linear, w4a16_rope_qkv  # late: ops calls us
    from quantkit.kernels.packing import interleave_rope

    heads, kv, d, k, g, sym, ms = ROPE_CASE
    layer = interleave_rope([prepare(testing.random_qlinear(n * d, k, group_size=g, sym=sym, act_order=False,
                                                            dtype=dtype, seed=seed + i), device=device,
                                     layouts=("mma",)) for i, n in enumerate((heads, kv, kv))], heads, kv, d)
    gen = torch.Generator().manual_seed(seed)
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    for m in ms:
        if rope_at(m, layer) is None:
            continue
        x = testing.random_activations(m, k, dtype=dtype, seed=900 + m, device=device)
        angle = torch.rand(m, d // 2, generator=gen) * 6.3
        cos, sin = (torch.cat([f(angle)] * 2, -1).to(device, dtype) for f in (torch.cos, torch.sin))
        caches = torch.randn(2, m, kv, 5, d, generator=gen).to(device, dtype).repeat(2, 1, 1, 1, 1)  # k, v, k, v
        at = torch.tensor([3], device=device)
        want = rope_rows(w4a16_linear(x, layer), cos, sin, caches[0], caches[1], at, heads)
        got = w4a16_rope_qkv(x, layer, None, cos, sin, caches[2], caches[3], at, heads, backend="kernel")
        q_ok, k_ok = (torch.allclose(a.float(), b.float(), rtol=ulp, atol=1e-3)
                      for a, b in ((got, want), (caches[2], caches[0])))
        v_ok = torch.equal(caches[3], caches[1])
        if not (q_ok and k_ok and v_ok):
            raise KernelSelfCheckError(
                f"W4A16 kernel 'mma' with the rotary epilogue disagrees with its product rotated in torch on {device} "
                f"(M={m} heads={heads} kv={kv} head_dim={d} K={k} group={g} {dtype}): q {'ok' if q_ok else 'differs'}, "
                f"k cache {'ok' if k_ok else 'differs'}, v cache {'ok' if v_ok else 'differs'}; do not use its "
                f"results, report this with the GPU name")


def self_check(device: torch.device | str | None = None, *, force: bool = False) -> None:
    """Run every kernel path on CASES and the dispatch on DISPATCH_CASES; raise KernelSelfCheckError on the first
    mismatch."""
    from quantkit.kernels.ops import kernel_path  # late: ops calls us

    device = torch.device(device or "cuda")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device in _checked and not force:
        return
    _checked.add(device)  # before running, so the paths below don't recurse into the check
    layouts = ("dot2",) if torch.version.hip else ("mma", "dot2")
    try:
        for seed, (m, n, k, g, sym, act) in enumerate(CASES):
            for dtype in (torch.float16, torch.bfloat16):
                ql = testing.random_qlinear(n, k, group_size=g, sym=sym, act_order=act, dtype=dtype, seed=seed)
                packed = prepare(ql, device=device, layouts=layouts)
                x = testing.random_activations(m, k, dtype=dtype, seed=100 + seed, device=device)
                bias = testing.random_activations(1, n, dtype=dtype, seed=200 + seed, device=device)[0]
                w = reference_weight(packed, dtype)
                for backend in backends_for(m, device):
                    if backend == "staged":  # the shared-memory prefill kernel, whatever the shape
                        _check(packed, w, x, bias, backend, backend="mma", staged=True)
                    else:
                        _check(packed, w, x, bias, backend, backend=backend)
        for seed, (n, k, g, sym, act, dtype, ms) in enumerate(DISPATCH_CASES, start=len(CASES)):
            ql = testing.random_qlinear(n, k, group_size=g, sym=sym, act_order=act, dtype=dtype, seed=seed)
            packed = prepare(ql, device=device, layouts=layouts)
            bias = testing.random_activations(1, n, dtype=dtype, seed=200 + seed, device=device)[0]
            w = reference_weight(packed, dtype)
            for m in ms:
                x = testing.random_activations(m, k, dtype=dtype, seed=100 * seed + m, device=device)
                _check(packed, w, x, bias, kernel_path(m, packed, x)[0], backend="kernel")
        if not torch.version.hip:
            from quantkit.kernels.ops import GLU_WS  # late: ops imports us

            for dtype in (torch.float16, torch.bfloat16):
                _check_glu(device, dtype, len(CASES) + len(DISPATCH_CASES), GLU_CASE)
            if GLU_WS:
                _check_glu(device, torch.bfloat16, len(CASES) + len(DISPATCH_CASES) + 2, GLU_WS_CASE)
            for dtype in (torch.float16, torch.bfloat16):
                _check_fold(device, dtype, len(CASES) + len(DISPATCH_CASES) + 3)
                _check_mlp(device, dtype, len(CASES) + len(DISPATCH_CASES) + 4)
                _check_rope(device, dtype, len(CASES) + len(DISPATCH_CASES) + 5)
    except Exception:
        _checked.discard(device)
        raise
    log.info("W4A16 kernels agree with the reference on %s", device)
