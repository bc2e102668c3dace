"""The RDNA3 kernels' source run on the CPU (quantkit.kernels.host: csrc/w4a16_host.cpp over csrc/platform_host.h), so
that CI checks what the HIP build computes with no GPU: the dot2 decode kernel (csrc/w4a16_dot2.h) and the WMMA
prefill kernel (csrc/w4a16_wmma.h), with the launches of the extension's dot2_gemm / wmma_gemm and the k_split rules of
quantkit.kernels.ops, against the reference weight in fp64 within testing.tolerance (the GPU tests' bound). The
arithmetic stand-ins are CUDA's (platform.h), so this checks indexing, dequantization, the factored zero correction,
split-K through the 16-bit atomics and the epilogues, not gfx11's own rounding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantkit.kernels import host as host_kernels
from quantkit.kernels import ops, prepare, testing
from quantkit.kernels.reference import reference_weight

pytestmark = pytest.mark.skipif(host_kernels.CXX is None, reason="no C++ compiler (g++ or clang++-19)")

DTYPES = [torch.float16, torch.bfloat16]
LAYERS = [(32, True, False), (64, False, True), (128, False, False), (128, True, True)]  # group, sym, act-order


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    return host_kernels.load(tmp_path_factory.mktemp("host_kernels"))


def test_cpu_platform_keeps_its_promises(tmp_path):
    """What the tests below rely on (tests/host_platform_check.cpp, toy kernels): the block's barrier makes the other
    threads' shared-memory writes visible and a missing one shows as a stale read; a wave's qk_wmma16 follows gfx11's
    lane layout; threads stuck at barriers that cannot open make the launch fail rather than hang."""
    out = host_kernels.run_check(Path(__file__).parent / "host_platform_check.cpp", tmp_path)
    assert out.strip().endswith("7 cases, 0 failures"), out


def _layer(n, k, group, sym, act, dtype, seed):
    ql = testing.random_qlinear(n, k, group_size=group, sym=sym, act_order=act, dtype=dtype, seed=seed)
    packed = prepare(ql, device="cpu", layouts=("dot2",))
    assert not packed.kernel_reason, packed.kernel_reason
    bias = testing.random_activations(1, n, dtype=dtype, seed=seed + 1, device="cpu")[0]
    return ql, packed, reference_weight(packed, dtype), bias


def _run(kernel, x, packed, bias, k_split):
    """As w4a16_linear does for the dot2 layout: x in the act-order sort, K in pieces of k_split added into out."""
    x2 = x.index_select(1, packed.perm) if packed.perm is not None else x.contiguous()
    return ops._dot2_layout_gemm(kernel, x2, packed, bias, k_split)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("group,sym,act", LAYERS, ids=[f"g{g}-{'sym' if s else 'asym'}{'-act' if a else ''}"
                                                      for g, s, a in LAYERS])
def test_dot2_decode_matches_reference(host, dtype, group, sym, act):
    """Every row count of the four instances (1, 2, 4, 8 rows), on a layer whose last block of 1024 columns holds 16
    (its other threads return after staging x) with K in 3 splits, the last one short, and on one that K fits in one
    split (the plain store, no atomics); with and without a bias."""
    failures = []
    for n, k in ((1040, 640), (64, 256)):
        _, packed, w, bias = _layer(n, k, group, sym, act, dtype, seed=n + k + group)
        k_split = ops.dot2_k_split(group)
        for m in (1, 2, 3, 4, 7, 8):
            x = testing.random_activations(m, k, dtype=dtype, seed=m, device="cpu")
            b = bias if m % 2 else None
            err = testing.relative_error(_run(host.dot2_gemm, x, packed, b, k_split), w, x, b)
            tol = testing.tolerance(dtype, backend="dot2", k=k, group_size=group)
            if not err <= tol:
                failures.append(f"{n}x{k} M={m}: {err:.2e} > {tol:.1e}")
    assert not failures, "; ".join(failures)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("group,sym,act", LAYERS, ids=[f"g{g}-{'sym' if s else 'asym'}{'-act' if a else ''}"
                                                      for g, s, a in LAYERS])
def test_wmma_prefill_matches_reference(host, dtype, group, sym, act):
    """Row counts that leave the last block of 32 rows partly filled, on a layer whose last block of 64 columns is a
    quarter full (208), with 1 to 3 splits of K (each added into the 16-bit output; with 3 the last one is short);
    with a bias."""
    n, k = 208, 640
    _, packed, w, bias = _layer(n, k, group, sym, act, dtype, seed=n + k + group)
    failures = []
    for m in (1, 17, 40):
        x = testing.random_activations(m, k, dtype=dtype, seed=m, device="cpu")
        for splits in (1, 2, 3):
            k_split = ops.wmma_splits(m, n, k, group, 4, splits)
            err = testing.relative_error(_run(host.wmma_gemm, x, packed, bias, k_split), w, x, bias)
            if not err <= testing.tolerance(dtype, backend="wmma"):
                failures.append(f"M={m} k_split={k_split}: {err:.2e}")
    assert not failures, "; ".join(failures)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.version.hip is not None,
                    reason="needs an NVIDIA GPU (gfx11's own dot2 and WMMA may round otherwise than the stand-ins)")
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
def test_the_gpu_gives_the_cpu_builds_bits(host, dtype):
    """The extension's dot2_gemm and wmma_gemm on an NVIDIA GPU give the CPU build's bits wherever K is one split
    (with several, the order of the 16-bit atomic adds is the GPU's): both run the CUDA stand-ins, so what the tests
    above check on the CPU is what the GPU computes."""
    from quantkit.kernels import build, kernel_available

    ok, reason = kernel_available()
    if not ok:
        pytest.fail(f"a GPU is present but the kernels are not: {reason}")
    ext = build.load_extension()
    for kernel, n, k, ms in (("dot2_gemm", 1040, 256, (1, 3, 8)), ("wmma_gemm", 208, 640, (1, 17, 40))):
        for group, sym, act in ((64, False, True), (128, True, False)):
            ql, packed, _, bias = _layer(n, k, group, sym, act, dtype, seed=n + k + group)
            on_gpu = prepare(ql, device="cuda", layouts=("dot2",))
            for m in ms:
                x = testing.random_activations(m, k, dtype=dtype, seed=m, device="cpu")
                cpu = _run(getattr(host, kernel), x, packed, bias, k)
                gpu = _run(getattr(ext, kernel), x.cuda(), on_gpu, bias.cuda(), k)
                assert torch.equal(cpu, gpu.cpu()), (kernel, group, sym, act, m)
