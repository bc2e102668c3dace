"""The validator: perplexity (with KL divergence and top-1 agreement against a baseline) and throughput of a
quantized checkpoint beside its baseline, gathered into the eval JSON that reports and model cards render.

    result = evaluate(directory, baseline="org/model", throughput=Settings())       # a converted checkpoint
    result = evaluate(random_weights="llama-3-8b", group_size=128, throughput=...)  # shapes only, for speed
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from quantkit import __version__, data, reference, source as sources
from quantkit.errors import InputError, UnsupportedError
from quantkit.eval import backends, ppl
from quantkit.eval.throughput import Settings

log = logging.getLogger(__name__)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(device: str) -> torch.dtype:
    """fp32 on CPU (exact for bf16/fp16 weights and faster there), bf16 on a GPU."""
    return torch.float32 if str(device) == "cpu" else torch.bfloat16


def load_baseline(model: str, *, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM

    directory = sources.resolve(model)
    return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(device).eval()


def dense_model(directory: str | Path, *, dtype: torch.dtype, device: str):
    """The checkpoint's model with plain nn.Linear layers holding the dequantized weights: the unquantized
    model of the same shapes (and the same function), for a throughput baseline when none is given."""

    def dense(ql):
        lin = nn.Linear(ql.in_features, ql.out_features, bias=ql.bias is not None, device="meta")
        lin.weight = nn.Parameter(ql.dequantize(dtype), requires_grad=False)
        if ql.bias is not None:
            lin.bias = nn.Parameter(ql.bias.to(dtype), requires_grad=False)
        return lin

    return reference.load_model(directory, dtype=dtype, device=device, module_factory=dense)


def text_windows(directory: Path, text: str | None, *, ctx: int, max_windows: int | None):
    """(label, [W, ctx] windows) of the evaluation text, tokenized with the checkpoint's tokenizer."""
    from transformers import AutoTokenizer

    label, body = data.read_text(text, default=data.EVAL_TEXT)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return label, ppl.windows(ppl.tokenize(tokenizer, body), ctx=ctx, max_windows=max_windows)


def perplexity_section(model, base, wins: torch.Tensor, *, label: str, ctx: int, device: str, dtype: torch.dtype,
                       backend: str, baseline_name: str | None, progress: bool = True) -> dict:
    """The "perplexity" section: the model's perplexity and, with a baseline, the baseline's and the agreement."""
    where = f"cpu (llama.cpp), baseline on {device}" if backend == "llama.cpp" else device
    result = {"text": label, "ctx": ctx, "windows": int(wins.shape[0]), "device": where,
              "dtype": "GGUF" if backend == "llama.cpp" else str(dtype).removeprefix("torch."), "backend": backend}
    if base is None:
        result["quantized"] = ppl.score(model, wins, desc=f"perplexity ({backend})", progress=progress).to_dict()
        return result
    scores, base_scores, agreement = ppl.score_against(model, base, wins, progress=progress,
                                                       desc=f"perplexity ({backend} vs baseline)")
    result["quantized"] = scores.to_dict()
    result["baseline"] = {**base_scores.to_dict(), "model": baseline_name}
    result["ppl_ratio"] = round(scores.ppl / base_scores.ppl, 6)
    result.update(agreement.to_dict())
    return result


def evaluate_perplexity(
    directory: str | Path,
    *,
    text: str | None = None,
    baseline: str | None = None,
    ctx: int = 1024,
    max_windows: int | None = None,
    device: str | None = None,
    backend: str = "auto",
    progress: bool = True,
) -> dict:
    """The "perplexity" section for the checkpoint at ``directory`` (see perplexity_section)."""
    return evaluate(directory, text=text, baseline=baseline, ctx=ctx, max_windows=max_windows, device=device,
                    backend=backend, progress=progress)["perplexity"]


def evaluate(
    directory: str | Path | None = None,
    *,
    text: str | None = None,
    baseline: str | None = None,
    ctx: int = 1024,
    max_windows: int | None = None,
    device: str | None = None,
    backend: str = "auto",
    perplexity: bool = True,
    throughput: Settings | None = None,
    random_weights: str | Path | None = None,
    group_size: int = 128,
    quantize_lm_head: bool = False,
    command: str | None = None,
    progress: bool = True,
) -> dict:
    """The whole eval JSON: what was measured, on what, and the "perplexity" / "throughput" sections.

    A checkpoint ``directory`` gets perplexity (unless ``perplexity`` is False) and, with ``throughput``
    settings, throughput against ``baseline`` or, without one, against its own dequantized weights in bf16.
    ``random_weights`` (a config) measures throughput only, on a random model of those shapes (with
    ``quantize_lm_head``, its lm_head quantized too).
    """
    from quantkit.eval import throughput as speed
    from quantkit.manifest import weights_digest

    if (directory is None) == (random_weights is None):
        raise InputError("give either a checkpoint directory or --random-weights CONFIG (not both)")
    if quantize_lm_head and random_weights is None:
        raise InputError("--quantize-lm-head is for --random-weights; a checkpoint's lm_head is as convert wrote it")
    device = device or default_device()
    dtype = compute_dtype(device)
    backend = backends.resolve(backend, device)
    if throughput is not None:
        throughput.validate()
        if backend == "llama.cpp":
            raise UnsupportedError("throughput is measured through the torch backends (kernel, reference); "
                                   "for llama.cpp use its own llama-bench on the GGUF file")
    result: dict = {"quantkit_version": __version__}
    if command:
        result["command"] = command

    if random_weights is not None:
        if throughput is None:
            raise InputError("--random-weights is for speed runs: add --throughput (random weights have no meaningful perplexity)")
        if baseline is not None or text is not None:
            raise InputError("--random-weights measures throughput only; drop --baseline and --ppl")
        from quantkit.eval import random_weights as rw

        factory = backends.kernel_factory(device) if backend == "kernel" else reference.QuantLinear
        model, base, info = rw.build(random_weights, group_size=group_size, dtype=dtype, device=device,
                                     module_factory=factory, progress=progress, quantize_lm_head=quantize_lm_head)
        result["weights_digest"] = None
        result["model"] = {"random_weights": info, "backend": backend}
        result["throughput"] = speed.measure(model, base, settings=throughput, same_weights=True, progress=progress)
        result["throughput"]["backend"] = backend
        result["throughput"]["baseline"] = f"the same model in {str(dtype).removeprefix('torch.')} with the dequantized weights"
        return result

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise InputError(f"{directory}: no config.json; give a checkpoint directory written by `quantkit convert`")
    qcfg = reference.read_quant_config(directory)  # a clear error before anything heavy
    result["weights_digest"] = weights_digest(directory)
    result["model"] = {"directory": directory.name, "bits": qcfg.get("bits"), "group_size": qcfg.get("group_size"),
                       "sym": qcfg.get("sym"), "backend": backend}
    if not perplexity and throughput is None:
        raise InputError("nothing to measure: perplexity is off and --throughput was not given")
    model = backends.load(directory, backend, dtype=dtype, device=device)
    base = load_baseline(baseline, dtype=dtype, device=device) if baseline is not None else None
    if perplexity:
        label, wins = text_windows(directory, text, ctx=ctx, max_windows=max_windows)
        result["perplexity"] = perplexity_section(model, base, wins, label=label, ctx=ctx, device=device, dtype=dtype,
                                                  backend=backend, baseline_name=baseline, progress=progress)
    if throughput is not None:
        same = base is None
        if same:
            base = dense_model(directory, dtype=dtype, device=device)
        result["throughput"] = speed.measure(model, base, settings=throughput, same_weights=same, progress=progress)
        result["throughput"]["backend"] = backend
        result["throughput"]["baseline"] = (f"{baseline} ({str(dtype).removeprefix('torch.')})" if not same
                                            else f"the checkpoint's dequantized weights in {str(dtype).removeprefix('torch.')}")
    return result
