"""convert: a checkpoint in, a GPTQ checkpoint (and optionally a GGUF) out, one decoder layer at a time."""

from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from quantkit import __version__, source as sources
from quantkit.atomic import atomic_dir
from quantkit.errors import InputError
from quantkit.formats import gptq
from quantkit.manifest import MANIFEST, write_json
from quantkit.methods import make_quantizer, scale_dtype
from quantkit.plan import Plan, make_plan
from quantkit.recipes import Recipe
from quantkit.shards import DEFAULT_MAX_SHARD_BYTES, TORCH_DTYPES, ShardWriter

log = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the current program image; getrusage's
    ru_maxrss would also carry a parent's peak across fork and exec."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rdna3_refusals(recipe: Recipe, plan: Plan) -> list[str]:
    """Why vLLM's RDNA3 W4A16 kernel path would refuse this output (empty when it loads). Its group sizes (32 and
    more) are every one a recipe takes (Recipe's check)."""
    why = []
    if not recipe.sym:
        why.append("asymmetric zero points (it takes symmetric uint4b8 only)")
    narrow = [lin.name for lin in plan.quantized if lin.out_features % 8]
    if narrow:
        why.append(f"N % 8 != 0 in {len(narrow)} layers (e.g. {narrow[0]})")
    if recipe.gptq.act_order and not recipe.gptq.static_groups and recipe.method == "gptq":
        why.append("act-order without static groups")
    return why


def _relative_error(weight: torch.Tensor, ql, chunk: int = 1 << 20) -> float:
    """||dequantized - W|| / ||W||, a block of rows at a time (no full-size fp32 copies), summed in fp64."""
    num = den = 0.0
    rows = max(1, chunk // weight.shape[1])
    for start in range(0, weight.shape[0], rows):
        w = weight[start : start + rows].float()
        deq = ql.dequantize(rows=slice(start, start + rows))
        num += float(torch.linalg.vector_norm(deq - w, dtype=torch.float64) ** 2)
        den += float(torch.linalg.vector_norm(w, dtype=torch.float64) ** 2)
    return (num ** 0.5) / max(den ** 0.5, 1e-30)


def _quantization_config(recipe: Recipe, desc_act: bool, lm_head: bool) -> dict:
    return gptq.quantization_config(
        bits=recipe.bits,
        group_size=recipe.group_size,
        sym=recipe.sym,
        desc_act=desc_act,
        static_groups=recipe.gptq.static_groups if recipe.method == "gptq" else False,
        checkpoint_format=recipe.checkpoint_format,
        method=recipe.method,
        damp_percent=recipe.gptq.damp_percent if recipe.method == "gptq" else None,
        true_sequential=recipe.gptq.true_sequential,
        lm_head=lm_head,
        meta={"quantizer": [f"quantkit:{__version__}"], "recipe": recipe.name},
    )


def convert(
    model: str,
    out: str | Path,
    recipe: Recipe,
    *,
    force: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = True,
) -> dict:
    """Quantize ``model`` (Hub id, checkpoint dir or .gguf) into ``out`` following ``recipe``; returns the manifest."""
    started = time.perf_counter()
    out = Path(out)
    src_dir = sources.resolve(model)
    dtype = scale_dtype(recipe)
    with sources.TensorSource(src_dir) as src:
        shapes = {name: src.shape(name) for name in src.names()}
        plan = make_plan(src.config, shapes, group_size=recipe.group_size, skip=list(recipe.skip),
                         quantize_lm_head=recipe.quantize_lm_head)
        for why in rdna3_refusals(recipe, plan):
            log.warning(
                "vLLM's RDNA3 W4A16 kernel will refuse this checkpoint: %s; vLLM loads it through its ExLlama "
                "GPTQ kernel instead (ROCm) or gptq/Marlin (NVIDIA) where those accept it", why)
        if not recipe.sym and recipe.checkpoint_format == "gptq":
            log.warning("asymmetric zero points in GPTQ format v1: GPTQModel refuses such checkpoints unless it wrote "
                        "them itself; --checkpoint-format gptq_v2 stores the true zeros, which it loads")
        tied = bool(src.config.get("tie_word_embeddings", False))
        if plan.head is not None and plan.head.tied:
            log.info("lm_head is tied to %s: the embedding stays unquantized, lm_head is written as its own quantized "
                     "tensor and config.json's tie_word_embeddings becomes false", plan.head.source)
        state_dir = out.parent / f".{out.name}.quantkit-state"
        with atomic_dir(out, force=force) as tmp:
            writer = ShardWriter(tmp, max_bytes=max_shard_bytes)
            for name in plan.outside:
                if tied and name == "lm_head.weight":
                    continue  # tied embeddings stay tied
                _write_kept(writer, src, name, dtype)
            quantizer = make_quantizer(recipe, source=src, plan=plan, state_dir=state_dir)
            errors, layer_seconds, desc_act = {}, [], False
            for layer in tqdm(plan.layers, desc="quantizing layers", unit="layer", disable=not progress):
                t0 = time.perf_counter()
                desc_act = _convert_layer(layer, src, quantizer, writer, recipe, dtype, errors) or desc_act
                src.close()  # unmap the shards read so far: their pages would otherwise stay resident
                layer_seconds.append(round(time.perf_counter() - t0, 3))
            head_seconds = None
            if plan.head is not None:
                t0 = time.perf_counter()
                desc_act = _convert_head(plan.head, src, quantizer, writer, recipe, dtype, errors) or desc_act
                src.close()
                head_seconds = round(time.perf_counter() - t0, 3)
            shard_names = writer.close()
            _write_configs(tmp, src_dir, src.config, recipe, desc_act, dtype, lm_head=plan.head is not None)
            if "gguf" in recipe.formats:
                from quantkit.formats.gguf import write_gguf

                write_gguf(tmp, tmp / f"{out.name}-{'Q4_0' if recipe.sym else 'Q4_1'}.gguf")
            manifest = {
                "tool": "quantkit",
                "version": __version__,
                "source": {"model": model, "model_type": plan.model_type},
                "recipe": recipe.to_dict(),
                "layers": {
                    "quantized": len(plan.quantized),
                    "kept_unquantized": len(plan.skipped),
                    "skipped": plan.skipped,
                    "decoder_blocks": len(plan.layers),
                    "lm_head": "quantized" if plan.head else "tied to the embeddings" if tied else "kept",
                },
                "shards": shard_names,
                "relative_error": errors,
                "method_summary": quantizer.summary(),
                "timings": {
                    "total_s": round(time.perf_counter() - started, 3),
                    "per_layer_s": layer_seconds,
                    **({"lm_head_s": head_seconds} if head_seconds is not None else {}),
                    "peak_rss_mb": round(peak_rss_mb(), 1),
                },
            }
            write_json(tmp / MANIFEST, manifest)
        shutil.rmtree(state_dir, ignore_errors=True)
    return manifest


def _write_kept(writer: ShardWriter, src: sources.TensorSource, name: str, dtype: torch.dtype) -> None:
    """A tensor outside the blocks that stays unquantized (the embedding, lm_head, the final norm), in the model
    dtype: read, cast and written piece by piece, never held whole nor mapped."""
    stored = TORCH_DTYPES.get(src.dtype(name))
    if stored is None:
        raise InputError(f"{src.dir}: tensor {name} has dtype {src.dtype(name)}, which quantkit does not read; "
                         "convert it to a float dtype first")
    writer.add_pieces(name, src.shape(name), src.pieces(name), dtype=dtype if stored.is_floating_point else stored)


def _write_linear(writer: ShardWriter, name: str, ql, recipe: Recipe, dtype: torch.dtype) -> None:
    for suffix, tensor in gptq.pack(ql, checkpoint_format=recipe.checkpoint_format).items():
        writer.add(f"{name}.{suffix}", tensor, dtype=dtype if suffix == "bias" and tensor.is_floating_point() else None)


def _convert_layer(layer, src, quantizer, writer: ShardWriter, recipe: Recipe, dtype: torch.dtype, errors: dict) -> bool:
    """Quantize one decoder block and write it; records each linear's relative error. True if any linear has
    act-order groups (g_idx not k // group_size)."""
    weights = {n: src.get(n) for n in layer.kept}
    weights.update({f"{lin.name}.weight": src.get(f"{lin.name}.weight") for lin in layer.linears})
    weights.update({f"{lin.name}.bias": src.get(f"{lin.name}.bias") for lin in layer.linears if lin.has_bias})
    quantized = quantizer.quantize_layer(layer, weights)
    desc_act = False
    for lin in layer.linears:
        ql = quantized.pop(lin.name, None)
        if ql is None:
            raise RuntimeError(f"{lin.name}: the {recipe.method} method left this layer unquantized")
        errors[lin.name] = round(_relative_error(weights[f"{lin.name}.weight"], ql), 6)
        desc_act = desc_act or not ql.static_groups
        _write_linear(writer, lin.name, ql, recipe, dtype)
    for name in layer.kept:
        writer.add(name, weights[name], dtype=dtype if weights[name].is_floating_point() else None)
    return desc_act


def _convert_head(head, src, quantizer, writer: ShardWriter, recipe: Recipe, dtype: torch.dtype, errors: dict) -> bool:
    """Quantize lm_head (after the decoder blocks) and write it under lm_head.*; True if its groups are act-order."""
    weight = src.get(head.source)
    ql = quantizer.quantize_head(head, weight)
    errors[head.linear.name] = round(_relative_error(weight, ql), 6)
    _write_linear(writer, head.linear.name, ql, recipe, dtype)
    return not ql.static_groups


def _write_configs(tmp: Path, src_dir: Path, config: dict, recipe: Recipe, desc_act: bool, dtype: torch.dtype,
                   *, lm_head: bool) -> None:
    qcfg = _quantization_config(recipe, desc_act, lm_head)
    config = dict(config)
    config.pop("quantization_config", None)
    if lm_head and config.get("tie_word_embeddings"):
        config["tie_word_embeddings"] = False  # lm_head is its own (quantized) tensor now; the embedding stays
    config["dtype"] = config["torch_dtype"] = str(dtype).removeprefix("torch.")
    config["quantization_config"] = qcfg
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (tmp / "quantize_config.json").write_text(json.dumps(qcfg, indent=2, sort_keys=True) + "\n")
    for name in sources.AUX_FILES:
        if (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, tmp / name)
    if not any((tmp / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise InputError(f"{src_dir}: no tokenizer files (tokenizer.json, tokenizer.model or vocab.json); add them")
