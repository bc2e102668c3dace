"""The RDNA3 kernels on the CPU: the dot2 decode and WMMA prefill kernels (csrc/w4a16_dot2.h, csrc/w4a16_wmma.h) built
from csrc/w4a16_host.cpp with csrc/platform_host.h by the host C++ compiler, loaded with ctypes. For tests and
measurements of their arithmetic where no AMD GPU is (tests/test_host_kernels.py, bench/rdna3_split_error.py), not a
backend: each GPU thread is a fiber, one running at a time. ``load`` returns an object whose ``dot2_gemm``
and ``wmma_gemm`` take the arguments of the extension's functions of those names (quantkit.kernels.ops passes them to
ops._dot2_layout_gemm), on CPU tensors."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import torch

from quantkit.kernels.build import CSRC

# g++ (Debian's build-essential) or the clang-19 that CI installs for the RDNA3 ISA check
CXX = shutil.which("g++") or shutil.which("clang++-19")

# -ffp-contract=off: no multiply-add the source does not write as fmaf is fused (nvcc and clang fuse by their own rules)
FLAGS = ("-std=c++20", "-O1", "-DQK_HOST", "-fno-strict-aliasing", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas",
         "-I", str(CSRC))


def _compile(source: Path, out: Path, *flags: str) -> Path:
    res = subprocess.run([CXX, *FLAGS, *flags, str(source), "-o", str(out)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{Path(CXX).name} failed on {source.name}: {res.stderr.strip()[:3000]}")
    return out


def build(out_dir: Path) -> Path:
    return _compile(CSRC / "w4a16_host.cpp", out_dir / "libqk_host.so", "-shared", "-fPIC")


def run_check(source: Path, out_dir: Path) -> str:
    """Build a C++ check program (source) against csrc/ for the CPU and run it: its output
    (tests/host_platform_check.cpp ends it with "N cases, F failures"); RuntimeError if it exits non-zero."""
    exe = _compile(Path(source), out_dir / Path(source).stem)
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"{Path(source).name} failed: {res.stdout[-3000:]}")
    return res.stdout


class HostKernels:
    def __init__(self, lib: Path):
        self._lib = ctypes.CDLL(str(lib))
        for name in ("qk_host_dot2_gemm", "qk_host_wmma_gemm"):
            fn = getattr(self._lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 6 + [ctypes.c_int] * 5

    def _call(self, fn, x, qweight, scales, zeros, bias, out, group_size, k_split):
        tensors = (x, qweight, scales, zeros, bias, out)
        for t in tensors:
            assert t is None or (t.device.type == "cpu" and t.is_contiguous()), "CPU, contiguous operands"
        assert x.dtype in (torch.float16, torch.bfloat16) and scales.dtype == out.dtype == x.dtype
        m, k = x.shape
        n = qweight.shape[1]
        ptr = [None if t is None else t.data_ptr() for t in tensors]
        rc = fn(int(x.dtype == torch.bfloat16), *ptr, m, n, k, group_size, k_split)
        if rc != 0:
            what = "sizes refused" if rc == 1 else "threads waiting at barriers that cannot open"
            raise RuntimeError(f"{what}: M {m}, N {n}, K {k}, group {group_size}, k_split {k_split}")

    def dot2_gemm(self, *args) -> None:
        self._call(self._lib.qk_host_dot2_gemm, *args)

    def wmma_gemm(self, *args) -> None:
        self._call(self._lib.qk_host_wmma_gemm, *args)


def load(out_dir: Path) -> HostKernels:
    return HostKernels(build(out_dir))
