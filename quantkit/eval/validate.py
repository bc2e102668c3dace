"""Perplexity of a quantized checkpoint beside its baseline, on the same windows of the same text."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from quantkit import data, reference, source as sources
from quantkit.eval import ppl

log = logging.getLogger(__name__)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(device: str) -> torch.dtype:
    """fp32 on CPU (exact for bf16/fp16 weights and faster there), bf16 on a GPU."""
    return torch.float32 if device == "cpu" else torch.bfloat16


def load_baseline(model: str, *, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM

    directory = sources.resolve(model)
    return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(device).eval()


def evaluate_perplexity(
    directory: str | Path,
    *,
    text: str | None = None,
    baseline: str | None = None,
    ctx: int = 1024,
    max_windows: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """{'text', 'ctx', 'windows', 'quantized': {...}, 'baseline': {...}?} for the checkpoint at ``directory``."""
    from transformers import AutoTokenizer

    device = device or default_device()
    dtype = compute_dtype(device)
    label, body = data.read_text(text, default=data.EVAL_TEXT)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    wins = ppl.windows(ppl.tokenize(tokenizer, body), ctx=ctx, max_windows=max_windows)
    result = {"text": label, "ctx": ctx, "windows": wins.shape[0], "device": device, "dtype": str(dtype).removeprefix("torch.")}
    model = reference.load_model(directory, dtype=dtype, device=device)
    result["quantized"] = ppl.score(model, wins, desc="perplexity (quantized)", progress=progress).to_dict()
    del model
    if baseline is not None:
        base = load_baseline(baseline, dtype=dtype, device=device)
        result["baseline"] = ppl.score(base, wins, desc="perplexity (baseline)", progress=progress).to_dict()
        result["baseline"]["model"] = baseline
    return result
