"""What a checkpoint is: format, bits, group, symmetry, layers quantized/kept, size and bits per weight."""

from __future__ import annotations

import json
from pathlib import Path

from quantkit.errors import InputError
from quantkit.plan import LAYER_RE
from quantkit.source import TensorSource


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
        for name in src.names():
            if name.endswith((".qweight", ".qzeros", ".scales")):
                shape = src.shape(name)
                numel = shape[0] * shape[1]
                bytes_q += numel * (2 if name.endswith(".scales") else 4)
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
        "quantized_params": params_q,
        "other_params": params_other,
        "size_bytes": size,
        "bits_per_weight_quantized": round(8 * bytes_q / params_q, 3) if params_q else None,
        "bits_per_weight_overall": round(8 * size / (params_q + params_other), 3),
    }


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
