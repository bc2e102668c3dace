"""Build (once, cached on disk) and load the csrc/ extension with torch.utils.cpp_extension.

Nothing here raises at import: kernel_available() says whether the extension could be had, and why not.
The build directory is $QUANTKIT_KERNEL_CACHE (default ~/.cache/quantkit/kernels) / a name that hashes the
sources and flags, so a changed source rebuilds and an unchanged one loads its library straight away (no compiler run).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import torch

from quantkit.errors import InputError

log = logging.getLogger(__name__)

# The kernel sources: quantkit/_csrc, which in a clone is a link to the repository's csrc/ and in a wheel (or a
# non-editable install) holds the files themselves (pyproject.toml's package data); the repository's csrc/ where
# the link did not survive (a checkout or copy without symbolic links).
_PACKAGED = Path(__file__).resolve().parents[1] / "_csrc"
CSRC = _PACKAGED.resolve() if (_PACKAGED / "w4a16_ext.cu").is_file() else Path(__file__).resolve().parents[2] / "csrc"
# One translation unit per kernel family (w4a16_launch.h), no torch in them: the build compiles them in parallel.
SOURCES = ("w4a16_ext.cu", "w4a16_launch_stream.cu", "w4a16_launch_staged.cu", "w4a16_launch_wgmma.cu",
           "w4a16_launch_wgmma_wsm.cu", "w4a16_launch_wgmma_ws.cu",
           "w4a16_launch_wgmma_ws_big.cu", "w4a16_launch_wgmma_ws_small.cu", "w4a16_prefetch.cu")
# Every header, so that the cached library's name (a hash of the sources) changes with any of them: a list kept by
# hand had missed a new one.
HEADERS = tuple(sorted(p.name for p in CSRC.glob("*.h")))

_state: dict = {}


def cuda_flags(cc: str) -> list[str]:
    """nvcc's flags for compute capability ``cc`` ("89", "90a", ...) beside torch's own (which define the
    __CUDA_NO_HALF*__ macros that these undefine)."""
    return [f"-gencode=arch=compute_{cc},code=sm_{cc}", "-O3", "-std=c++17", "--expt-relaxed-constexpr",
            "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]


def defines(environ=os.environ) -> list[str]:
    """-D flags from QUANTKIT_KERNEL_DEFINES ("NAME=VALUE NAME2=VALUE2"): the sources' tuning macros (e.g.
    QK_STREAM_U_SMALL, csrc/w4a16_mma_cuda.h) set for an experiment; they are part of the build's hash, so such a
    build has a cache directory of its own."""
    out = []
    for item in environ.get("QUANTKIT_KERNEL_DEFINES", "").split():
        name = item.split("=", 1)[0]
        if not name.isidentifier():
            raise InputError(f"QUANTKIT_KERNEL_DEFINES: {item!r} is not NAME or NAME=VALUE")
        out.append(f"-D{item}")
    return out


def _arch_flags() -> list[str]:
    if torch.version.hip:
        arch = torch.cuda.get_device_properties(0).gcnArchName.split(":")[0]
        return [f"--offload-arch={arch}", "-O3", "-std=c++17"] + defines()
    major, minor = torch.cuda.get_device_capability()
    cc = f"{major}{minor}"
    if cc == "90":  # Hopper: the "a" target enables wgmma (csrc/w4a16_wgmma_cuda.h)
        cc = "90a"
    return cuda_flags(cc) + defines()


def _why_not() -> str:
    if not torch.cuda.is_available():
        return "no GPU visible to torch (torch.cuda.is_available() is False); using the pure-torch reference"
    missing = [name for name in SOURCES + HEADERS if not (CSRC / name).is_file()] if HEADERS else ["*.h"]
    if missing:  # an install that lost the kernel sources (the kernels are built from them on first use)
        return (f"the kernel sources are not at {CSRC} ({missing[0]} missing); reinstall quantkit (pip install "
                "-e . from a clone, or its wheel) to build the kernels; using the pure-torch reference")
    from torch.utils import cpp_extension

    if torch.version.hip:
        if cpp_extension.ROCM_HOME is None:
            return "ROCm (hipcc) not found; set ROCM_HOME to build the kernels"
    elif cpp_extension.CUDA_HOME is None or shutil.which("nvcc", path=os.path.join(cpp_extension.CUDA_HOME, "bin")) is None:
        return "nvcc not found; install the CUDA toolkit or set CUDA_HOME to build the kernels"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no host C++ compiler (c++) on PATH; install one to build the kernels"
    return ""


def load_extension():
    """The loaded extension module, or None (then ``_state['reason']`` says why). Builds at most once per process."""
    if "module" in _state:
        return _state["module"]
    reason = _why_not()
    module = None
    if not reason:
        flags = _arch_flags()
        digest = hashlib.sha256()
        for name in SOURCES + HEADERS:
            digest.update((CSRC / name).read_bytes())
        digest.update(" ".join(flags).encode())
        digest.update(torch.__version__.encode())
        name = "quantkit_w4a16_" + digest.hexdigest()[:12]
        build_dir = Path(os.environ.get("QUANTKIT_KERNEL_CACHE", Path.home() / ".cache" / "quantkit" / "kernels")) / name
        build_dir.mkdir(parents=True, exist_ok=True)
        built = build_dir / f"{name}.so"
        try:
            module = None
            if built.exists():  # the directory's name hashes sources, flags and torch: this library is current
                try:
                    module = _import_library(name, built)
                except ImportError as exc:  # e.g. a library left half-written: build it again
                    log.warning("could not load %s (%s); rebuilding", built, exc)
            module = module or _build(name, flags, build_dir)
        except Exception as exc:  # a compiler failure must not crash the caller: the reference path still works
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            reason = f"building the W4A16 extension failed ({first}); set QUANTKIT_KERNEL_VERBOSE=1 for the log"
            log.warning(reason)
    _state["module"] = module
    _state["reason"] = reason
    return module


def _import_library(name: str, path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(name: str, flags: list[str], build_dir: Path):
    from torch.utils import cpp_extension

    log.info("building the W4A16 extension in %s (first use; cached afterwards)", build_dir)
    return cpp_extension.load(
        name=name, sources=[str(CSRC / s) for s in SOURCES], extra_cuda_cflags=flags,
        extra_cflags=["-O3", "-std=c++17"], extra_include_paths=[str(CSRC)], build_directory=str(build_dir),
        verbose=bool(os.environ.get("QUANTKIT_KERNEL_VERBOSE")),
    )


def kernel_available() -> tuple[bool, str]:
    """(True, "") when the extension is built and loaded for this device, else (False, the reason)."""
    module = load_extension()
    return module is not None, _state.get("reason", "")
