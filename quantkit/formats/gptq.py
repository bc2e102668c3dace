"""GPTQ checkpoint tensors (docs/formats.md §1): pack a QuantizedLinear into qweight/qzeros/scales/g_idx and back.

Layout, for `bits` = 4 (pack factor 8 = 32 // bits):
  qweight int32 [K/8, N]   qweight[i, n] = sum_j codes[n, 8i+j] << 4j   (LSB first)
  qzeros  int32 [G, N/8]   qzeros[g, i]  = sum_j stored[g, 8i+j] << 4j, stored = zero - 1 in format v1 ("gptq"),
                           the true zero in v2 ("gptq_v2")
  scales  [G, N]           model dtype
  g_idx   int32 [K]
"""

from __future__ import annotations

from typing import Callable

import torch

from quantkit.qlinear import QuantizedLinear

FORMATS = ("gptq", "gptq_v2")
PACK_CHUNK = 1 << 20  # values packed per block (8 MB of int64 temporaries)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 holding unsigned 32-bit words -> int32 with the same bits."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack [R, C] small unsigned ints along R: out[i, c] = sum_j values[f*i + j, c] << bits*j, f = 32 // bits."""
    factor = 32 // bits
    rows, cols = values.shape
    if rows % factor:
        raise ValueError(f"{rows} rows do not pack into {factor}-value words")
    shifts = (torch.arange(factor, dtype=torch.int64) * bits).view(1, factor, 1)
    out = torch.empty(rows // factor, cols, dtype=torch.int32, device=values.device)
    step = max(1, PACK_CHUNK // max(1, cols * factor))  # words per block: int64 temporaries stay small
    for w0 in range(0, rows // factor, step):
        w1 = min(w0 + step, rows // factor)
        v = values[w0 * factor : w1 * factor].to(torch.int64).reshape(w1 - w0, factor, cols)
        out[w0:w1] = _to_int32((v << shifts).sum(dim=1))
    return out


def unpack_rows(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of pack_rows: int32 [R/f, C] -> uint8 [R, C]."""
    factor = 32 // bits
    w = words.to(torch.int64) & 0xFFFFFFFF
    shifts = (torch.arange(factor, dtype=torch.int64) * bits).view(1, factor, 1)
    v = (w.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return v.reshape(-1, words.shape[1]).to(torch.uint8)


def pack_cols(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack [R, C] along C into int32 [R, ceil(C/f)] (the columns beyond C are zero)."""
    factor = 32 // bits
    pad = (-values.shape[1]) % factor
    v = torch.nn.functional.pad(values.to(torch.int64), (0, pad))
    return pack_rows(v.T.contiguous(), bits).T.contiguous()


def unpack_cols(words: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    return unpack_rows(words.T.contiguous(), bits).T[:, :cols].contiguous()


def pack(ql: QuantizedLinear, *, checkpoint_format: str = "gptq") -> dict[str, torch.Tensor]:
    """The GPTQ tensors of one layer, keyed by suffix (qweight, qzeros, scales, g_idx[, bias])."""
    if checkpoint_format not in FORMATS:
        raise ValueError(f"unknown GPTQ checkpoint format {checkpoint_format!r}; use one of {FORMATS}")
    if 32 % ql.bits:
        raise ValueError(f"{ql.bits}-bit codes do not pack into 32-bit words")
    stored = ql.zeros.to(torch.int64)
    if checkpoint_format == "gptq":
        if int(stored.min()) < 1:
            raise ValueError("format v1 stores zero - 1 and cannot hold a zero point of 0; write gptq_v2")
        stored = stored - 1
    out = {
        "qweight": pack_rows(ql.codes.T.contiguous(), ql.bits),
        "qzeros": pack_cols(stored, ql.bits),
        "scales": ql.scales.contiguous(),
        "g_idx": ql.g_idx.to(torch.int32).contiguous(),
    }
    if ql.bias is not None:
        out["bias"] = ql.bias.contiguous()
    return out


def unpack(
    get: Callable[[str], torch.Tensor],
    *,
    bits: int,
    group_size: int,
    sym: bool,
    checkpoint_format: str = "gptq",
    has_bias: bool = False,
) -> QuantizedLinear:
    """Read one layer back; ``get(suffix)`` returns the tensor ``PREFIX.suffix``."""
    qweight, qzeros, scales = get("qweight"), get("qzeros"), get("scales")
    codes = unpack_rows(qweight, bits).T.contiguous()  # [N, K]
    n, k = codes.shape
    zeros = unpack_cols(qzeros, bits, n)
    if checkpoint_format == "gptq":
        zeros = zeros + 1
    try:
        g_idx = get("g_idx").to(torch.int32)
    except KeyError:
        g_idx = torch.arange(k, dtype=torch.int32) // group_size
    return QuantizedLinear(
        codes=codes,
        scales=scales,
        zeros=zeros,
        g_idx=g_idx,
        bits=bits,
        group_size=group_size,
        sym=sym,
        bias=get("bias") if has_bias else None,
    )


def quantization_config(
    *, bits: int, group_size: int, sym: bool, desc_act: bool, static_groups: bool, checkpoint_format: str,
    method: str, damp_percent: float | None, true_sequential: bool, meta: dict, lm_head: bool = False,
) -> dict:
    """The ``quantization_config`` block that vLLM, transformers (optimum/gptqmodel) read; ``lm_head``: whether
    lm_head is quantized (the key vLLM's GPTQConfig and GPTQModel read)."""
    cfg = {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group_size,
        "desc_act": desc_act,
        "sym": sym,
        "static_groups": static_groups,
        "true_sequential": true_sequential,
        "checkpoint_format": checkpoint_format,
        "lm_head": lm_head,
        "meta": meta,
    }
    if damp_percent is not None:
        cfg["damp_percent"] = damp_percent
    cfg["meta"] = {**meta, "method": method}
    return cfg
