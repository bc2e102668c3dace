"""The RDNA3 (gfx1100) ISA of csrc/, compiled here with Debian's clang-19 (no GPU needed), and the CUDA source
built for sm_90 with nvcc where nvcc exists: the instructions the design relies on are there, nothing spills."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

CSRC = Path(__file__).resolve().parents[1] / "csrc"
TU = CSRC / "w4a16_instances.cu"
CLANG = shutil.which("clang++-19")
NVCC = shutil.which("nvcc")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import hip_isa  # noqa: E402  (bench/hip_isa.py: the same compile and reading of the kernels)


@pytest.fixture(scope="module")
def gfx1100_asm(tmp_path_factory) -> str:
    if CLANG is None:
        pytest.skip("clang++-19 not installed (.ci/run installs clang-19 libamdhip64-dev rocm-device-libs)")
    return hip_isa.compile_gfx1100(out=tmp_path_factory.mktemp("isa") / "w4a16_gfx1100.s")


def test_dot2_instructions_in_decode_kernels(gfx1100_asm):
    kernels = {k: v for k, v in hip_isa.kernels(gfx1100_asm).items() if "qk_dot2_decode" in k}
    assert len(kernels) == 12, sorted(kernels)
    for name, body in kernels.items():
        if "QkF16" in name:
            assert re.search(r"\bv_dot2(acc)?_f32_f16\b", body), f"{name} has no v_dot2_f32_f16"
        else:
            assert re.search(r"\bv_dot2_f32_bf16\b", body), f"{name} has no v_dot2_f32_bf16"
        assert "global_atomic_cmpswap_b64" in body, f"{name} has no 64-bit CAS for the split-K adds"


def test_wmma_instructions_in_prefill_kernels(gfx1100_asm):
    kernels = {k: v for k, v in hip_isa.kernels(gfx1100_asm).items() if "qk_wmma_prefill" in k}
    assert len(kernels) == 4, sorted(kernels)
    for name, body in kernels.items():
        op = "v_wmma_f32_16x16x16_f16" if "QkF16" in name else "v_wmma_f32_16x16x16_bf16"
        assert re.search(rf"\b{op}\b", body), f"{name} has no {op}"


def test_no_scratch_no_spills(gfx1100_asm):
    assert re.findall(r"\.private_segment_fixed_size:\s+(\d+)", gfx1100_asm), "no kernel metadata found"
    for key in ("private_segment_fixed_size", "vgpr_spill_count", "sgpr_spill_count"):
        values = [int(v) for v in re.findall(rf"\.{key}:\s+(\d+)", gfx1100_asm)]
        assert len(values) == 16 and not any(values), f"{key}: {values}"
    assert not re.search(r"\bscratch_(load|store)", gfx1100_asm)


def test_no_calls_no_dynamic_stack(gfx1100_asm):
    """Every kernel is one body: no call (s_swappc / s_setpc) and no stack of unknown size. HIP's own threadIdx,
    blockIdx, gridDim and __syncthreads are calls into ROCm's device library, which a ROCm build links and inlines but
    this -nogpulib compile does not: the kernels reach them through platform.h's builtins (qk_thread_x, qk_sync, ...),
    so that the ISA checked here is the one a ROCm build makes, its registers and the spill check above included."""
    rows, bodies = hip_isa.summary(gfx1100_asm), hip_isa.kernels(gfx1100_asm)
    assert len(rows) == 16, [r["kernel"] for r in rows]
    for r in rows:
        assert r["calls"] == 0 and not r["dynamic_stack"], r
        assert "@rel32@" not in bodies[r["kernel"]], f"{r['kernel']} refers to an external symbol"


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_cuda_source_builds_for_sm90a_without_spills(tmp_path):
    cmd = [NVCC, "-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a", "-Xptxas", "-v", "-c", str(TU),
           "-o", str(tmp_path / "w4a16.o"), "-keep", "-keep-dir", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"nvcc failed on {TU.name}: {res.stderr.strip()[:2000]}"
    report = res.stderr
    # 48 the fold's (FOLD; 8 of them blocks of 8 warps), 4 the one-launch MLP, 16 the one-token-tile instances of 8
    # warps a tile (8 with the fold), 8 the rotary epilogue's (ROPE; blocks of 8 and of 4 warps)
    assert report.count("Compiling entry function") == 240, report[:2000]
    for kernel in ("qk_mma_stream", "qk_mma_mlp", "qk_mma_staged", "qk_wgmma_gemm", "qk_wgmma_ws", "qk_wgmma_pack_x",
                   "qk_wmma_prefill", "qk_l2_prefetch"):
        assert kernel in report, f"no {kernel} instance"
    assert "C7513" not in report and "C7512" not in report, "ptxas serialized the wgmma pipeline"
    ptx = "".join(f.read_text() for f in tmp_path.glob("*.ptx"))
    for n in (16, 32, 64, 128, 256):
        assert f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16" in ptx, f"no m64n{n}k16 bf16 wgmma in the PTX"
    assert "griddepcontrol.wait" in ptx and "griddepcontrol.launch_dependents" in ptx, "no programmatic-launch hooks"
    assert "cp.async.bulk.prefetch.L2.global" in ptx, "no bulk L2 prefetch in the PTX"
    assert "createpolicy.fractional.L2::evict_first" in ptx and "L2::cache_hint.v4.u32" in ptx, \
        "no evict-first weight loads in the prefetching decode kernels"
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump:  # the SASS too, where the toolkit has the disassembler (.ci/run installs cuobjdump and nvdisasm)
        ws = sorted(set(re.findall(r"Compiling entry function '(_Z11qk_wgmma_ws\w+)'", report)))
        res = subprocess.run([cuobjdump, "-sass", "-fun", ",".join(ws), str(tmp_path / "w4a16.o")], capture_output=True,
                             text=True)  # the warp-specialized kernels only: the whole object is 400 MB of text
        assert res.returncode == 0, f"cuobjdump failed: {res.stderr.strip()[:2000]}"
        assert re.search(r"\bHGMMA\.64x(64|128|256)x16\.F32\.BF16\b", res.stdout), "no bf16 HGMMA in the SASS"
        check_ws_pipelining(res.stdout)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    stacks = re.findall(r"(\d+) bytes stack frame", report)
    assert spills and all(s == ("0", "0") for s in spills), spills
    assert stacks and all(s == "0" for s in stacks), stacks


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_torch_binding_builds_for_sm90a(tmp_path):
    """csrc/w4a16_ext.cu, the torch binding (argument checks, launcher calls), compiles for sm_90a with the flags the
    extension's build uses, against this torch's headers: a binding that does not match its launchers fails here,
    not in the first build on a GPU machine. Compiled, not linked. A CPU build of torch ships every header but one
    that its CUDA build generates (c10/cuda/impl/cuda_cmake_macros.h), which is stood in for here."""
    from torch.utils import cpp_extension

    from quantkit.kernels import build

    if not (Path(cpp_extension.include_paths()[0]) / "c10" / "cuda" / "CUDAStream.h").exists():
        pytest.skip("this torch ships no c10/cuda headers")
    stub = tmp_path / "include" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = [tmp_path / "include", *cpp_extension.include_paths(), sysconfig.get_paths()["include"], CSRC]
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    cmd = [NVCC, *build.cuda_flags("90a"), *(f"-I{d}" for d in includes), "-DTORCH_API_INCLUDE_EXTENSION_H",
           "-DTORCH_EXTENSION_NAME=quantkit_w4a16", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-Xcompiler", "-fPIC",
           "-c", str(CSRC / "w4a16_ext.cu"), "-o", str(tmp_path / "w4a16_ext.o")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"nvcc failed on w4a16_ext.cu: {res.stderr.strip()[-3000:]}"


# Token tiles whose warp-specialized consumers dequantize the next step while this step's MMAs run (csrc:
# qk_ws_pipe); the other tiles wait for their MMAs first.
WS_PIPELINED_BT = {256}
_SASS_INSN = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(\S[^;]*);")


def ws_overlap_windows(body: str, least: int = 32) -> list[int]:
    """For one function's SASS: the length of each stretch between a committed wgmma group (an HGMMA with gsb0) and the
    wait for it (the next WARPGROUP.DEPBAR) that holds at least `least` instructions and a stage wait
    (SYNCS.PHASECHK), i.e. the next step's dequantization running under the MMAs."""
    insns = [m.group(1) for m in map(_SASS_INSN.match, body.splitlines()) if m]
    windows = []
    for i, op in enumerate(insns):
        if op.startswith("HGMMA") and "gsb0" in op:
            end = next((j for j in range(i + 1, len(insns)) if insns[j].startswith("WARPGROUP.DEPBAR")), len(insns))
            if end - i - 1 >= least and any(w.startswith("SYNCS.PHASECHK") for w in insns[i + 1:end]):
                windows.append(end - i - 1)
    return windows


def check_ws_pipelining(sass: str) -> None:
    """Every qk_wgmma_ws instance of a pipelined tile overlaps its MMAs with the next step's work in the SASS (ptxas
    did not move the wait up), and no other instance does (so the check tells the two apart)."""
    parts = re.split(r"^\s*Function : (\S+)\s*$", sass, flags=re.M)
    seen = set()
    for name, body in zip(parts[1::2], parts[2::2]):
        m = re.search(r"qk_wgmma_wsI\d+Qk(?:F16|BF16)Li(\d+)E", name)
        if not m:
            continue
        bt = int(m.group(1))
        seen.add(bt)
        windows = ws_overlap_windows(body)
        # 256 tokens, or PL set (PROBE not; the last flag is GLU)
        if bt in WS_PIPELINED_BT or re.search(r"ELi\d+ELb1ELb0ELb[01]EEv", name):
            assert windows, f"{name}: no HGMMA group runs under the next step's dequantization (qk_ws_pipe)"
        else:
            assert not windows, f"{name}: {bt}-token instance overlaps its MMAs ({windows}); update WS_PIPELINED_BT"
    assert seen >= {16, 32, 64, 128, 256}, f"warp-specialized tiles found in the SASS: {sorted(seen)}"


def test_generated_wgmma_header_is_current():
    """csrc/w4a16_wgmma_ops.h is written by csrc/gen/wgmma_ops.py; the committed file must be what it writes."""
    gen = Path(__file__).resolve().parents[1] / "csrc" / "gen" / "wgmma_ops.py"
    res = subprocess.run([sys.executable, str(gen), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, "csrc/w4a16_wgmma_ops.h differs from what csrc/gen/wgmma_ops.py writes; run it"
