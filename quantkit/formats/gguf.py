"""GGUF writer (llama.cpp) from a quantized GPTQ checkpoint directory, and its reader for `inspect` (docs/gguf.md).

The 4-bit weights are carried over exactly (docs/formats.md §3): a symmetric layer (zero 8 everywhere) becomes Q4_0,
any other 4-bit layer Q4_1 (a quantized lm_head too, as output.weight); groups of 64/128 repeat their scale over
32-blocks. Norms and biases are F32, the unquantized matrices (embedding, lm_head, layers left in full precision)
F16 or BF16. Tensor names come from
gguf.get_tensor_name_map; for the `llama` architecture the rows of q_proj/k_proj are permuted as llama.cpp expects
(rows are outputs, so codes, scales and zeros move together and the groups along K survive). Hyper-parameters and
the full tokenizer go into the metadata. Supported: llama, mistral (written as `llama`), qwen2, qwen3.

A plain, unquantized checkpoint (no quantization_config) is written too, every matrix F16/BF16: that is the
full-precision GGUF llama.cpp's own quantizer starts from.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gguf
import numpy as np
import torch

from quantkit.atomic import atomic_file
from quantkit.errors import InputError, UnsupportedError
from quantkit.formats import gguf_blocks as blocks
from quantkit.formats.gptq import unpack
from quantkit.qlinear import QuantizedLinear
from quantkit.source import TensorSource

log = logging.getLogger(__name__)

GQT = gguf.GGMLQuantizationType
# HF model_type -> (GGUF architecture, permute q/k rows)
ARCHES = {
    "llama": (gguf.MODEL_ARCH.LLAMA, True),
    "mistral": (gguf.MODEL_ARCH.LLAMA, True),
    "qwen2": (gguf.MODEL_ARCH.QWEN2, False),
    "qwen3": (gguf.MODEL_ARCH.QWEN3, False),
}
FLOAT_TYPES = {"f16": GQT.F16, "bf16": GQT.BF16, "f32": GQT.F32, "q8_0": GQT.Q8_0}
# Pre-tokenizer regexes of the BPE tokenizers we recognise (as found in their tokenizer.json) -> llama.cpp's name.
_CONTRACTIONS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
_TAIL = "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
PRE_REGEXES = {
    _CONTRACTIONS + "\\p{N}{1,3}" + _TAIL: "llama-bpe",
    _CONTRACTIONS + "\\p{N}" + _TAIL: "qwen2",
}
LINEAR_GGUF = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@dataclass
class _Entry:
    """One output tensor: its GGUF name and type, its numpy byte shape, and how to produce its data."""

    name: str
    qtype: GQT
    shape: tuple[int, ...]  # the numpy shape handed to GGUFWriter (bytes for block types)
    nbytes: int
    make: Callable[[], np.ndarray]


# ---------------------------------------------------------------------------------------------------------- tensors


def llama_row_permutation(n_rows: int, n_head: int) -> torch.Tensor:
    """Row order llama.cpp uses for q/k of the `llama` architecture: within each head, the two rotate-half
    halves are interleaved (HF row h*D + i*D/2 + j goes to GGUF row h*D + 2j + i)."""
    if n_rows % (2 * n_head):
        raise UnsupportedError(f"{n_rows} q/k rows do not split into {n_head} heads of even size")
    return torch.arange(n_rows).reshape(n_head, 2, n_rows // n_head // 2).transpose(1, 2).reshape(-1)


def permute_rows(ql: QuantizedLinear, perm: torch.Tensor) -> QuantizedLinear:
    """The same layer with its outputs (rows of codes, columns of scales/zeros, bias) reordered by ``perm``."""
    return QuantizedLinear(
        codes=ql.codes[perm].contiguous(),
        scales=ql.scales[:, perm].contiguous(),
        zeros=ql.zeros[:, perm].contiguous(),
        g_idx=ql.g_idx,
        bits=ql.bits,
        group_size=ql.group_size,
        sym=ql.sym,
        bias=None if ql.bias is None else ql.bias[perm].contiguous(),
    )


def q4_type(ql: QuantizedLinear) -> GQT:
    return GQT.Q4_0 if bool((ql.zeros == 8).all()) else GQT.Q4_1


def encode_linear(ql: QuantizedLinear, name: str) -> tuple[GQT, np.ndarray]:
    """A 4-bit QuantizedLinear -> (Q4_0 or Q4_1, uint8 bytes [N, K/32 * block bytes]); raises naming ``name``."""
    if ql.bits != 4:
        raise UnsupportedError(f"{name}: {ql.bits}-bit weights have no exact GGUF block type; quantize to 4 bits")
    if not ql.static_groups:
        raise UnsupportedError(
            f"{name}: act-order without static groups (g_idx is not k // group_size) cannot be expressed in GGUF "
            "blocks; re-quantize with desc_act=false or static_groups=true"
        )
    qtype = q4_type(ql)
    try:
        _, rel = blocks.to_fp16(ql.scales)
        if rel:
            log.info("%s: scales rounded to fp16 for GGUF (largest relative change %.2g)", name, rel)
        if qtype == GQT.Q4_0:
            data = blocks.encode_q4_0(ql.codes, ql.scales, group_size=ql.group_size)
        else:
            data = blocks.encode_q4_1(ql.codes, ql.scales, ql.zeros, group_size=ql.group_size)
    except ValueError as e:
        raise UnsupportedError(f"{name}: {e}") from e
    return qtype, data


def encode_float(t: torch.Tensor, qtype: GQT) -> np.ndarray:
    """A float tensor -> the numpy array GGUFWriter takes for ``qtype`` (F32, F16, BF16 bytes, Q8_0 bytes)."""
    if qtype == GQT.F32:
        return t.to(torch.float32).numpy()
    if qtype == GQT.F16:
        return t.to(torch.float16).numpy()
    if qtype == GQT.BF16:
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint8)
    if qtype == GQT.Q8_0:
        return gguf.quants.quantize(t.to(torch.float32).numpy(), GQT.Q8_0)
    raise UnsupportedError(f"no writer for GGUF type {qtype.name}")


def _float_nbytes(shape: tuple[int, ...], qtype: GQT) -> tuple[tuple[int, ...], int]:
    if qtype in (GQT.F32, GQT.F16):
        size = 4 if qtype == GQT.F32 else 2
        return shape, math.prod(shape) * size
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        raise UnsupportedError(f"row of {shape[-1]} values does not split into {qtype.name} blocks of {block}")
    byte_shape = (*shape[:-1], shape[-1] // block * type_size)
    return byte_shape, math.prod(byte_shape)


# --------------------------------------------------------------------------------------------------------- metadata


def _rope(cfg: dict) -> dict:
    rope = dict(cfg.get("rope_parameters") or {})
    if cfg.get("rope_scaling"):
        rope.update(cfg["rope_scaling"])
    if "rope_theta" not in rope and "rope_theta" in cfg:
        rope["rope_theta"] = cfg["rope_theta"]
    rope.setdefault("rope_type", rope.get("type", "default"))
    return rope


def _add_hparams(w: gguf.GGUFWriter, cfg: dict, arch: gguf.MODEL_ARCH, config_path: Path) -> list[_Entry]:
    """Architecture hyper-parameters; returns extra tensors they imply (llama3 rope frequency factors)."""
    try:
        hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_embedding_length(hidden)
        w.add_block_count(cfg["num_hidden_layers"])
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(heads)
        w.add_head_count_kv(cfg.get("num_key_value_heads", heads))
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    except KeyError as e:
        raise InputError(f"{config_path}: missing {e.args[0]!r}; a Llama-family config.json is expected") from e
    head_dim = cfg.get("head_dim") or hidden // heads
    if cfg.get("head_dim"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch == gguf.MODEL_ARCH.LLAMA:
        w.add_vocab_size(cfg["vocab_size"])
        w.add_rope_dimension_count(head_dim)
    rope = _rope(cfg)
    w.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    kind = rope["rope_type"]
    extra: list[_Entry] = []
    if kind in ("linear", "yarn"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if kind == "linear" else gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(rope["factor"]))
        if "original_max_position_embeddings" in rope:
            w.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif kind == "llama3" and arch == gguf.MODEL_ARCH.LLAMA:
        factors = _llama3_rope_factors(rope, head_dim)
        extra.append(_Entry("rope_freqs.weight", GQT.F32, tuple(factors.shape), factors.nbytes, lambda: factors))
    elif kind != "default":
        raise UnsupportedError(f"{config_path}: rope type {kind!r} is not supported by the GGUF writer")
    return extra


def _llama3_rope_factors(rope: dict, dim: int) -> np.ndarray:
    """Per-frequency divisors of Llama-3.1 rope scaling (llama.cpp reads them from the rope_freqs tensor)."""
    base, factor = float(rope.get("rope_theta", 10000.0)), float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    wavelen = 2 * math.pi * base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    smooth = (old_ctx / wavelen - low) / (high - low)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, mid))
    return out.astype(np.float32)


# -------------------------------------------------------------------------------------------------------- tokenizer


def bpe_pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name (tokenizer.ggml.pre) for the pre-tokenizer of a byte-level BPE tokenizer.json."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    regexes = [p.get("pattern", {}).get("Regex") for p in parts if p.get("type") == "Split"]
    digits = any(p.get("type") == "Digits" and p.get("individual_digits") for p in parts)
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if len(regexes) == 1 and regexes[0] in PRE_REGEXES and not digits:
        return PRE_REGEXES[regexes[0]]
    if not regexes and len(byte_level) == 1 and byte_level[0].get("use_regex", True):
        return "smollm" if digits else "gpt-2"  # GPT-2's regex, after single-digit splitting for SmolLM
    raise UnsupportedError(
        f"pre-tokenizer {json.dumps(pre)[:120]}... is not one quantkit recognises; pass tokenizer_pre= "
        "with llama.cpp's name for it (see tokenizer.ggml.pre in a GGUF of the same model)"
    )


def _add_tokenizer(w: gguf.GGUFWriter, directory: Path, vocab_size: int, tokenizer_pre: str | None) -> None:
    if (directory / "tokenizer.model").is_file():
        _add_sentencepiece(w, directory, vocab_size)
    elif (directory / "tokenizer.json").is_file():
        _add_bpe(w, directory, vocab_size, tokenizer_pre)
    else:
        raise InputError(f"{directory}: no tokenizer.json or tokenizer.model; copy the tokenizer files beside config.json")
    special = gguf.SpecialVocab(directory, load_merges=not (directory / "tokenizer.model").is_file(), n_vocab=vocab_size)
    if "bos" not in special.add_special_token or "eos" not in special.add_special_token:
        adds_bos, adds_eos = _adds_special_tokens(directory)
        special.add_special_token.setdefault("bos", adds_bos)
        special.add_special_token.setdefault("eos", adds_eos)
    special.add_to_gguf(w, quiet=True)
    cfg_path = directory / "tokenizer_config.json"
    if cfg_path.is_file():
        prefix = json.loads(cfg_path.read_text()).get("add_prefix_space")
        if prefix is not None:
            w.add_add_space_prefix(bool(prefix))


def _adds_special_tokens(directory: Path) -> tuple[bool, bool]:
    """Whether the HF tokenizer puts BOS in front / EOS behind a plain text (llama.cpp needs it stated)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    ids = tok("a")["input_ids"]
    return (tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id],
            tok.eos_token_id is not None and ids[-1:] == [tok.eos_token_id])


def _add_bpe(w: gguf.GGUFWriter, directory: Path, vocab_size: int, tokenizer_pre: str | None) -> None:
    from transformers import AutoTokenizer

    path = directory / "tokenizer.json"
    tok_json = json.loads(path.read_text(encoding="utf-8"))
    if tok_json.get("model", {}).get("type") != "BPE":
        raise UnsupportedError(f"{path}: {tok_json.get('model', {}).get('type')} tokenizers are not supported; BPE or SentencePiece only")
    tok = AutoTokenizer.from_pretrained(directory)
    vocab = tok.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise InputError(f"{path}: token id {max(vocab.values())} is beyond the model's vocab_size {vocab_size}")
    by_id = {i: t for t, i in vocab.items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            a = added[i]
            special = a.special or (a.content.startswith("<|") and a.content.endswith("|>"))
            text = a.content if special or not a.normalized else tok.decode(tok.encode(a.content, add_special_tokens=False))
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tokenizer_pre or bpe_pre_tokenizer(tok_json))
    w.add_token_list(tokens)
    w.add_token_types(types)


def _add_sentencepiece(w: gguf.GGUFWriter, directory: Path, vocab_size: int) -> None:
    import sentencepiece

    path = directory / "tokenizer.model"
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise InputError(f"{path}: not a SentencePiece model ({e}); re-download the tokenizer") from e
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        if i >= sp.vocab_size():
            tokens.append(f"[PAD{i}]".encode())
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(sp.IdToPiece(i).encode("utf-8"))
        scores.append(sp.GetScore(i))
        types.append(
            gguf.TokenType.UNKNOWN if sp.IsUnknown(i) else gguf.TokenType.CONTROL if sp.IsControl(i)
            else gguf.TokenType.UNUSED if sp.IsUnused(i) else gguf.TokenType.BYTE if sp.IsByte(i)
            else gguf.TokenType.NORMAL
        )
    added = directory / "tokenizer.json"
    if added.is_file():  # tokens added on top of the SentencePiece model (chat markers ...)
        for a in json.loads(added.read_text(encoding="utf-8")).get("added_tokens", []):
            i = a["id"]
            if sp.vocab_size() <= i < vocab_size:
                tokens[i] = a["content"].encode("utf-8")
                scores[i] = -1000.0
                types[i] = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)


# ---------------------------------------------------------------------------------------------------------- writer


def _quant_params(cfg: dict, config_path: Path) -> dict | None:
    q = cfg.get("quantization_config")
    if q is None:
        return None
    if q.get("quant_method", "gptq") != "gptq":
        raise UnsupportedError(f"{config_path}: quant_method {q.get('quant_method')!r}; the GGUF writer reads GPTQ checkpoints")
    try:
        params = {k: q[k] for k in ("bits", "group_size", "sym")}
    except KeyError as e:
        raise InputError(f"{config_path}: quantization_config lacks {e.args[0]!r}") from e
    params["checkpoint_format"] = q.get("checkpoint_format", "gptq")
    return params


def _planned_q4_type(src: TensorSource, prefix: str, qp: dict, *, k: int, n: int, group: int) -> GQT:
    """Q4_0 or Q4_1 for one packed layer, read from its zeros and g_idx alone; raises early on what GGUF cannot hold."""
    from quantkit.formats.gptq import unpack_cols

    if qp["bits"] != 4:
        raise UnsupportedError(f"{prefix}: {qp['bits']}-bit weights have no exact GGUF block type; quantize to 4 bits")
    if k % blocks.BLOCK or group % blocks.BLOCK:
        raise UnsupportedError(f"{prefix}: K={k} / group size {group} are not multiples of 32; GGUF blocks cannot express them")
    if f"{prefix}.g_idx" in src:
        g_idx = src.get(f"{prefix}.g_idx").to(torch.int64)
        if not torch.equal(g_idx, torch.arange(k) // group):
            raise UnsupportedError(
                f"{prefix}: act-order without static groups (g_idx is not k // group_size) cannot be expressed in "
                "GGUF blocks; re-quantize with desc_act=false or static_groups=true"
            )
    zeros = unpack_cols(src.get(f"{prefix}.qzeros"), 4, n).to(torch.int64)
    if qp["checkpoint_format"] == "gptq":
        zeros = zeros + 1
    return GQT.Q4_0 if bool((zeros == 8).all()) else GQT.Q4_1


def _plan(src: TensorSource, *, unquantized: GQT, embedding: GQT) -> tuple[list[_Entry], gguf.MODEL_ARCH, set[GQT]]:
    cfg, config_path = src.config, src.dir / "config.json"
    model_type = cfg.get("model_type")
    if model_type not in ARCHES:
        raise UnsupportedError(f"{config_path}: model_type {model_type!r} is not supported; GGUF export covers {sorted(ARCHES)}")
    arch, permute = ARCHES[model_type]
    layers = cfg["num_hidden_layers"]
    heads, kv_heads = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    tmap = gguf.get_tensor_name_map(arch, layers)
    qp = _quant_params(cfg, config_path)
    names = set(src.names())
    prefixes = sorted(n[: -len(".qweight")] for n in names if n.endswith(".qweight"))
    if prefixes and qp is None:
        raise InputError(f"{config_path}: tensors are GPTQ-packed but config.json has no quantization_config")
    covered = {f"{p}.{s}" for p in prefixes for s in ("qweight", "qzeros", "scales", "g_idx", "bias")}
    entries, qtypes = [], set()

    def gguf_name(hf_name: str) -> str:
        out = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if out is None:
            raise UnsupportedError(f"{src.dir}: tensor {hf_name} has no GGUF name for architecture {gguf.MODEL_ARCH_NAMES[arch]}")
        return out

    def perm_for(hf_name: str) -> torch.Tensor | None:
        """Row permutation of q_proj/k_proj (weights, biases, quantized layers) for the `llama` architecture."""
        if permute and ".q_proj" in hf_name:
            return llama_row_permutation(src.shape(hf_name)[0] if ".qweight" not in hf_name else src.shape(hf_name)[1], heads)
        if permute and ".k_proj" in hf_name:
            return llama_row_permutation(src.shape(hf_name)[0] if ".qweight" not in hf_name else src.shape(hf_name)[1], kv_heads)
        return None

    for prefix in prefixes:
        name = gguf_name(prefix + ".weight")
        k, n = src.shape(f"{prefix}.qweight")
        k *= 32 // qp["bits"]
        group = qp["group_size"] if qp["group_size"] > 0 else k  # -1: one group per row
        perm = perm_for(f"{prefix}.qweight")

        def load(prefix=prefix, group=group, perm=perm) -> QuantizedLinear:
            ql = unpack(lambda s: src.get(f"{prefix}.{s}"), bits=qp["bits"], group_size=group, sym=qp["sym"],
                        checkpoint_format=qp["checkpoint_format"], has_bias=False)
            return ql if perm is None else permute_rows(ql, perm)

        qtype = _planned_q4_type(src, prefix, qp, k=k, n=n, group=group)
        qtypes.add(qtype)
        size = gguf.GGML_QUANT_SIZES[qtype][1] * (k // blocks.BLOCK)
        entries.append(_Entry(name, qtype, (n, size), n * size, lambda load=load, prefix=prefix: encode_linear(load(), prefix)[1]))
        if f"{prefix}.bias" in names:
            def bias(prefix=prefix, perm=perm) -> np.ndarray:
                b = src.get(f"{prefix}.bias").float()
                return (b if perm is None else b[perm]).numpy()

            entries.append(_Entry(gguf_name(f"{prefix}.bias"), GQT.F32, (n,), 4 * n, bias))

    for hf_name in sorted(names - covered):
        if hf_name.endswith(("rotary_emb.inv_freq", ".g_idx")):
            continue
        shape = src.shape(hf_name)
        out = gguf_name(hf_name)
        if len(shape) == 1 or hf_name.endswith(".bias"):
            qtype = GQT.F32
        elif out in ("token_embd.weight", "output.weight"):
            qtype = embedding
        else:
            qtype = unquantized
        byte_shape, nbytes = _float_nbytes(tuple(shape), qtype)

        def make(hf_name=hf_name, qtype=qtype) -> np.ndarray:
            t = src.get(hf_name)
            perm = perm_for(hf_name)
            if perm is not None:
                t = t[perm]
            return encode_float(t, qtype)

        entries.append(_Entry(out, qtype, byte_shape, nbytes, make))
        if len(shape) == 2 and out not in ("token_embd.weight", "output.weight"):
            qtypes.add(qtype)
    return entries, arch, qtypes


def _file_type(qtypes: set[GQT]) -> int:
    ft = gguf.LlamaFileType
    for qtype, value in ((GQT.Q4_1, ft.MOSTLY_Q4_1), (GQT.Q4_0, ft.MOSTLY_Q4_0), (GQT.Q8_0, ft.MOSTLY_Q8_0),
                         (GQT.BF16, ft.MOSTLY_BF16), (GQT.F16, ft.MOSTLY_F16)):
        if qtype in qtypes:
            return int(value)
    return int(ft.ALL_F32)


def write_gguf(
    checkpoint_dir: Path,
    out_path: Path,
    *,
    unquantized_type: str = "auto",
    embedding_type: str | None = None,
    tokenizer_pre: str | None = None,
    name: str | None = None,
) -> Path:
    """Write ``out_path`` (a .gguf) from the GPTQ (or plain) checkpoint in ``checkpoint_dir``; returns out_path.

    unquantized_type: GGUF type of matrices that stay in full precision: "auto" (BF16 for a bf16 model, else F16),
    "f16", "bf16", "f32" or "q8_0". embedding_type: the same choice for token_embd/output (default: as
    unquantized_type). tokenizer_pre: llama.cpp's pre-tokenizer name when quantkit does not recognise it.
    """
    checkpoint_dir, out_path = Path(checkpoint_dir), Path(out_path)
    with TensorSource(checkpoint_dir) as src:
        cfg = src.config
        if unquantized_type == "auto":
            unquantized_type = "bf16" if str(cfg.get("dtype", cfg.get("torch_dtype"))) == "bfloat16" else "f16"
        choices = {}
        for option, value in (("unquantized_type", unquantized_type), ("embedding_type", embedding_type or unquantized_type)):
            if value not in FLOAT_TYPES:
                raise InputError(f"{option}={value!r}; choose one of {sorted(FLOAT_TYPES)}")
            choices[option] = FLOAT_TYPES[value]
        entries, arch, qtypes = _plan(src, unquantized=choices["unquantized_type"], embedding=choices["embedding_type"])
        w = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name or cfg.get("_name_or_path") or cfg.get("_model_name_or_path") or checkpoint_dir.name)
        w.add_quantized_by("quantkit")
        entries += _add_hparams(w, cfg, arch, checkpoint_dir / "config.json")
        w.add_file_type(_file_type(qtypes))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_tokenizer(w, checkpoint_dir, cfg["vocab_size"], tokenizer_pre)
        for e in entries:
            w.add_tensor_info(e.name, e.shape, np.dtype(np.uint8) if e.qtype not in (GQT.F32, GQT.F16) else
                              np.dtype(np.float32 if e.qtype == GQT.F32 else np.float16), e.nbytes,
                              raw_dtype=e.qtype if e.qtype not in (GQT.F32, GQT.F16) else None)
        with atomic_file(out_path) as tmp:
            try:
                w.write_header_to_file(path=tmp)
                w.write_kv_data_to_file()
                w.write_ti_data_to_file()
                for e in entries:
                    data = e.make()
                    if data.nbytes != e.nbytes:
                        raise UnsupportedError(f"{checkpoint_dir}: tensor {e.name} came out {data.nbytes} bytes, planned {e.nbytes}")
                    w.write_tensor_data(data)
            finally:
                w.close()
    if GQT.Q4_1 in qtypes:
        log.info("%s: Q4_1 stores m = -scale * zero in fp16, rounded (at most 2**-11 of |m|)", out_path.name)
    log.info("wrote %s (%d tensors, %s)", out_path, len(entries), ", ".join(sorted(t.name for t in qtypes)))
    return out_path


# ---------------------------------------------------------------------------------------------------------- reader


def read_gguf_summary(path: str | Path) -> dict:
    """What `inspect` shows for a .gguf: metadata, each tensor's type/shape/bytes, counts and bits per weight."""
    path = Path(path)
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise InputError(f"{path}: not a readable GGUF file ({e})") from e

    def field(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    tensors, by_type = [], {}
    total_bytes = total_params = lin_bytes = lin_params = 0
    for t in reader.tensors:
        params, nbytes = int(t.n_elements), int(t.n_bytes)
        typ = t.tensor_type.name
        tensors.append({"name": t.name, "type": typ, "shape": [int(x) for x in t.shape], "params": params,
                        "bytes": nbytes, "bpw": round(8 * nbytes / params, 4)})
        agg = by_type.setdefault(typ, {"tensors": 0, "params": 0, "bytes": 0})
        agg["tensors"] += 1
        agg["params"] += params
        agg["bytes"] += nbytes
        total_bytes += nbytes
        total_params += params
        if t.name.startswith("blk.") and t.name.split(".")[2] in LINEAR_GGUF and t.name.endswith(".weight"):
            lin_bytes += nbytes
            lin_params += params
    ftype = field("general.file_type")
    return {
        "format": "gguf",
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "architecture": arch,
        "name": field("general.name"),
        "file_type": gguf.LlamaFileType(ftype).name if ftype is not None else None,
        "block_count": field(f"{arch}.block_count"),
        "tokenizer": field("tokenizer.ggml.model"),
        "tokenizer_pre": field("tokenizer.ggml.pre"),
        "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else None,
        "tensor_count": len(tensors),
        "params": total_params,
        "tensor_bytes": total_bytes,
        "bits_per_weight": round(8 * total_bytes / total_params, 4) if total_params else None,
        "linear_bits_per_weight": round(8 * lin_bytes / lin_params, 4) if lin_params else None,
        "types": by_type,
        "tensors": tensors,
    }


def render_gguf_summary(summary: dict) -> str:
    """read_gguf_summary as text: the header, one line per GGUF type, then one line per tensor."""
    head = {k: v for k, v in summary.items() if k not in ("types", "tensors")}
    width = max(len(k) for k in head)
    lines = [f"{k.replace('_', ' '):<{width}}  {v}" for k, v in head.items()]
    lines += ["", f"{'type':<8} {'tensors':>7} {'params':>12} {'bytes':>12}  bpw"]
    for typ, agg in sorted(summary["types"].items(), key=lambda kv: -kv[1]["bytes"]):
        lines.append(f"{typ:<8} {agg['tensors']:>7} {agg['params']:>12} {agg['bytes']:>12}  {8 * agg['bytes'] / agg['params']:.3f}")
    name_width = max((len(t["name"]) for t in summary["tensors"]), default=4)
    lines += ["", f"{'tensor':<{name_width}}  {'type':<6} {'shape':<16} bpw"]
    for t in summary["tensors"]:
        lines.append(f"{t['name']:<{name_width}}  {t['type']:<6} {'x'.join(map(str, t['shape'])):<16} {t['bpw']}")
    return "\n".join(lines)
