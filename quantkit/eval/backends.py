"""The backends a quantized checkpoint is evaluated through, all reading the same weights:

  reference   quantkit.reference.QuantLinear: dequantize once, then a plain matmul (any device).
  kernel      quantkit.kernels.W4A16Linear: the W4A16 kernels on the 4-bit weights (CUDA/ROCm).
  llama.cpp   the checkpoint's GGUF file through llama-cpp-python (perplexity only; CPU build).
  auto        kernel when a GPU and the kernels are available, else reference.

Each loader returns an object that quantkit.eval.ppl scores: a transformers model (reference, kernel) or an
object with ``logprobs(batch)`` (llama.cpp).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from quantkit import reference
from quantkit.errors import InputError, UnsupportedError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "reference", "kernel", "llama.cpp")


def resolve(backend: str, device: str) -> str:
    """The concrete backend for ``backend`` on ``device`` (auto -> kernel or reference)."""
    if backend not in BACKENDS:
        raise InputError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    if not str(device).startswith("cuda"):
        return "reference"
    from quantkit.kernels import kernel_available

    ok, why = kernel_available()
    if not ok:
        log.warning("W4A16 kernels unavailable (%s); evaluating through the reference backend", why)
        return "reference"
    return "kernel"


def kernel_factory(device: str | torch.device):
    """module_factory for quantkit.reference.load_model: every quantized linear as a W4A16Linear on ``device``
    running the kernels (never silently the reference)."""
    from quantkit.kernels import W4A16Linear, kernel_available, prepare

    device = torch.device(device)
    if device.type != "cuda":
        raise UnsupportedError(f"the kernel backend runs on a GPU, the device is {device}; use --backend reference")
    ok, why = kernel_available()
    if not ok:
        raise UnsupportedError(f"the kernel backend cannot run: {why}; use --backend reference")

    def factory(ql):
        packed = prepare(ql, device=device, keep_reference=False)
        if packed.kernel_reason:
            raise UnsupportedError(f"a {ql.out_features}x{ql.in_features} layer cannot run on the W4A16 kernels: "
                                   f"{packed.kernel_reason}; use --backend reference")
        bias = None if ql.bias is None else ql.bias.to(device)
        return W4A16Linear(packed, bias, backend="kernel")

    return factory


def load(directory: str | Path, backend: str, *, dtype: torch.dtype, device: str):
    """The quantized model of ``directory`` through a concrete backend (see resolve)."""
    if backend == "reference":
        return reference.load_model(directory, dtype=dtype, device=device)
    if backend == "kernel":
        return reference.load_model(directory, dtype=dtype, device=device, module_factory=kernel_factory(device))
    if backend == "llama.cpp":
        return LlamaCppModel(find_gguf(directory))
    raise InputError(f"unknown backend {backend!r}")


def find_gguf(path: str | Path) -> Path:
    """The GGUF file of a checkpoint: ``path`` itself, or the single *.gguf inside the directory."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return path
    found = sorted(path.glob("*.gguf")) if path.is_dir() else []
    if len(found) != 1:
        what = "no .gguf file" if not found else f"{len(found)} .gguf files ({', '.join(f.name for f in found)})"
        raise InputError(f"{path}: {what}; --backend llama.cpp needs exactly one (convert with --format gptq,gguf)")
    return found[0]


class LlamaCppModel:
    """A GGUF file in llama.cpp (llama-cpp-python), scored on the same token windows as the torch models."""

    device = torch.device("cpu")

    def __init__(self, path: Path, *, threads: int | None = None):
        try:
            import llama_cpp
        except ImportError as e:
            raise UnsupportedError("--backend llama.cpp needs llama-cpp-python (pip install llama-cpp-python)") from e
        self.path = path
        self._llama_cpp = llama_cpp
        self._threads = threads or max(1, os.cpu_count() or 1)
        self._llm = None
        self._ctx = 0

    def _model(self, ctx: int):
        if self._llm is None or self._ctx != ctx:
            self.close()
            self._llm = self._llama_cpp.Llama(
                model_path=str(self.path), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True,
                n_threads=self._threads, n_threads_batch=self._threads, n_gpu_layers=0, verbose=False)
            self._ctx = ctx
        return self._llm

    def logprobs(self, batch: torch.Tensor) -> torch.Tensor:
        """fp32 [B, ctx-1, vocab] log-probabilities of tokens 1..ctx-1 of each window (no BOS added)."""
        import numpy as np

        out = []
        for row in batch:
            tokens = row.tolist()
            llm = self._model(len(tokens))
            llm.reset()
            llm.eval(tokens)
            logits = torch.from_numpy(np.array(llm.scores[: len(tokens) - 1], dtype=np.float32))
            out.append(torch.log_softmax(logits, dim=-1))
        return torch.stack(out)

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def __del__(self):
        self.close()
