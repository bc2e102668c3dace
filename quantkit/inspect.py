"""What a checkpoint is: format, bits, group, symmetry, layers quantized/kept, size and bits per weight."""

from __future__ import annotations

import json
from pathlib import Path

from quantkit.errors import InputError
from quantkit.plan import LAYER_RE
from quantkit.source import TensorSource

DTYPE_BITS = {"F32": 32, "F16": 16, "BF16": 16}  # safetensors dtype names


def _dir_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.suffix == ".safetensors")


def summarize(path: str | Path) -> dict:
    path = Path(path)
    if path.suffix == ".gguf":
        from quantkit.formats.gguf import read_gguf_summary

        return read_gguf_summary(path)
    if not path.is_dir():
        raise InputError(f"{path}: not a checkpoint directory or .gguf file")
    with TensorSource(path) as src:
        config = src.config
        qcfg = config.get("quantization_config") or {}
        quantized, kept_linear, params_q, params_other, bytes_q = [], [], 0, 0, 0
        for name in src.names():
            shape = src.shape(name)
            numel = 1
            for d in shape:
                numel *= d
            if name.endswith(".qweight"):
                quantized.append(name[: -len(".qweight")])
                params_q += shape[0] * (32 // qcfg.get("bits", 4)) * shape[1]
            elif name.endswith((".qzeros", ".scales", ".g_idx")):
                pass
            else:
                params_other += numel
                if name.endswith(".weight") and len(shape) == 2 and LAYER_RE.match(name):
                    kept_linear.append(name[: -len(".weight")])
        packed_bytes = {}
        for name in src.names():
            if name.endswith((".qweight", ".qzeros", ".scales")):
                shape = src.shape(name)
                numel = shape[0] * shape[1]
                prefix = name.rpartition(".")[0]
                packed_bytes[prefix] = packed_bytes.get(prefix, 0) + numel * (2 if name.endswith(".scales") else 4)
        bytes_q = sum(packed_bytes.values())
        lm_head, lm_head_bpw = _lm_head(src, config, qcfg, packed_bytes)
    size = _dir_size(path)
    return {
        "path": str(path),
        "format": f"gptq ({qcfg.get('checkpoint_format', 'gptq')})" if qcfg.get("quant_method") == "gptq" else "unquantized",
        "model_type": config.get("model_type"),
        "dtype": config.get("dtype") or config.get("torch_dtype"),
        "bits": qcfg.get("bits"),
        "group_size": qcfg.get("group_size"),
        "sym": qcfg.get("sym"),
        "desc_act": qcfg.get("desc_act"),
        "quantizer": (qcfg.get("meta") or {}).get("quantizer"),
        "linears_quantized": len(quantized),
        "linears_kept": len(kept_linear),
        "lm_head": lm_head,
        "lm_head_bits_per_weight": lm_head_bpw,
        "quantized_params": params_q,
        "other_params": params_other,
        "size_bytes": size,
        "bits_per_weight_quantized": round(8 * bytes_q / params_q, 3) if params_q else None,
        "bits_per_weight_overall": round(8 * size / (params_q + params_other), 3),
    }


def _lm_head(src: TensorSource, config: dict, qcfg: dict, packed_bytes: dict[str, int]) -> tuple[str, float | None]:
    """How lm_head is stored ("quantized", "kept", "tied to the embeddings" or "absent") and its bits per weight."""
    if "lm_head.qweight" in src:
        rows, cols = src.shape("lm_head.qweight")
        params = rows * (32 // qcfg.get("bits", 4)) * cols
        return "quantized", round(8 * packed_bytes["lm_head"] / params, 3)
    if "lm_head.weight" in src:
        return "kept", DTYPE_BITS.get(src.dtype("lm_head.weight"))
    if config.get("tie_word_embeddings"):
        return "tied to the embeddings", None
    return "absent", None


def render(summary: dict) -> str:
    if summary.get("format") == "gguf":
        from quantkit.formats.gguf import render_gguf_summary

        return render_gguf_summary(summary)
    width = max(len(k) for k in summary)
    lines = []
    for key, value in summary.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        lines.append(f"{key.replace('_', ' '):<{width}}  {value}")
    return "\n".join(lines)
