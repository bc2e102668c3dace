"""GGUF writer on tiny random Llama/Mistral/Qwen2/Qwen3 GPTQ checkpoints built here (RTN in the fixture):
names, types, metadata, tokenizer, row permutation and exact weights read back through gguf-py; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from quantkit.errors import InputError, UnsupportedError
from quantkit.formats.gguf import llama_row_permutation, read_gguf_summary, write_gguf
from quantkit.formats.gptq import pack
from quantkit.methods import rtn as rtn_method
from quantkit.qlinear import QuantizedLinear

TEXT = Path("/work/shared/data/text/ladysusan.txt")
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _text() -> str:
    if TEXT.is_file():
        return TEXT.read_text(encoding="utf-8")[:60000]
    return "It is a truth universally acknowledged, that a single man in possession of a good fortune. " * 200


def make_tokenizer(directory: Path, *, vocab_size: int, style: str) -> None:
    """A small byte-level BPE trained on a little prose; style 'gpt2' (ByteLevel regex) or 'qwen2' (Split regex)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if style == "qwen2":
        from quantkit.formats.gguf import PRE_REGEXES

        regex = next(r for r, name in PRE_REGEXES.items() if name == "qwen2")
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(regex), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 3, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_text()], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>")
    fast.save_pretrained(directory)


def rtn(w: torch.Tensor, group: int, *, sym: bool) -> QuantizedLinear:
    """Round-to-nearest 4-bit from quantkit.methods.rtn without the scale search (scales in w's dtype)."""
    return rtn_method.quantize(w, bits=4, group_size=group, sym=sym, scale_dtype=w.dtype, min_zero=0, search=False)


ARCH_CONFIGS = {
    "llama": dict(model_type="llama", attention_bias=True),  # bias too, to check that q/k biases are permuted
    "mistral": dict(model_type="mistral"),
    "qwen2": dict(model_type="qwen2"),
    "qwen3": dict(model_type="qwen3", head_dim=32),  # head_dim != hidden / heads
}


def make_checkpoint(directory: Path, arch: str = "llama", *, group: int = 32, sym: bool = True,
                    dtype=torch.float16, tie: bool = False, checkpoint_format: str = "gptq", seed: int = 0,
                    quantize: bool = True, g_idx_perm: bool = False, hidden: int = 64,
                    qk_std: float = 0.05):
    """A tiny random model of ``arch``, its linears RTN-quantized and GPTQ-packed; returns (dir, {prefix: QuantizedLinear})."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = 384
    extra = dict(ARCH_CONFIGS[arch])
    model_type = extra.pop("model_type")
    cfg = AutoConfig.for_model(model_type, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                               max_position_embeddings=512, tie_word_embeddings=tie, rms_norm_eps=1e-6,
                               bos_token_id=1, eos_token_id=2, **extra)
    model = AutoModelForCausalLM.from_config(cfg).to(dtype)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k, v in state.items():  # norms away from 1 so that a misplaced norm shows
        if k.endswith("norm.weight"):
            state[k] = (1 + 0.3 * torch.randn_like(v.float())).to(dtype)
        elif k.endswith(".bias"):
            state[k] = (0.1 * torch.randn_like(v.float())).to(dtype)
        elif v.ndim == 2:  # larger q/k make attention sharp, so that rope and head layout matter
            std = qk_std if k.endswith(("q_proj.weight", "k_proj.weight")) else 0.05
            state[k] = (std * torch.randn_like(v.float())).to(dtype)
    if tie:
        state.pop("lm_head.weight", None)
    qls = {}
    if quantize:
        for name in [n for n in state if n.endswith(".weight") and n.split(".")[-2] in LINEARS]:
            prefix = name[: -len(".weight")]
            ql = rtn(state.pop(name), group, sym=sym)
            bias = state.pop(prefix + ".bias", None)
            if g_idx_perm:
                ql = QuantizedLinear(codes=ql.codes, scales=ql.scales, zeros=ql.zeros,
                                     g_idx=ql.g_idx[torch.randperm(len(ql.g_idx))], bits=4, group_size=group, sym=sym)
            if bias is not None:
                ql = QuantizedLinear(**{**ql.__dict__, "bias": bias})
            qls[prefix] = ql
            for suffix, t in pack(ql, checkpoint_format=checkpoint_format).items():
                state[f"{prefix}.{suffix}"] = t
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    config = cfg.to_dict()
    config["dtype"] = str(dtype).removeprefix("torch.")
    if quantize:
        config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": group, "sym": sym,
                                         "desc_act": g_idx_perm, "static_groups": False,
                                         "checkpoint_format": checkpoint_format}
    (directory / "config.json").write_text(json.dumps(config))
    make_tokenizer(directory, vocab_size=vocab, style="qwen2" if arch.startswith("qwen") else "gpt2")
    return directory, qls, state


def _reader_tensor(reader: gguf.GGUFReader, name: str):
    return next(t for t in reader.tensors if t.name == name)


def _dequant(t) -> np.ndarray:
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)])


@pytest.mark.parametrize("arch", list(ARCH_CONFIGS))
def test_writes_exact_weights_names_and_metadata(tmp_path, arch):
    ckpt, qls, state = make_checkpoint(tmp_path / "ckpt", arch)
    out = write_gguf(ckpt, tmp_path / "model.gguf")
    r = gguf.GGUFReader(out)
    f = {k: v.contents() for k, v in r.fields.items()}
    gguf_arch = "llama" if arch in ("llama", "mistral") else arch
    assert f["general.architecture"] == gguf_arch
    assert f[f"{gguf_arch}.block_count"] == 2 and f[f"{gguf_arch}.embedding_length"] == 64
    assert f[f"{gguf_arch}.attention.head_count"] == 4 and f[f"{gguf_arch}.attention.head_count_kv"] == 2
    assert f[f"{gguf_arch}.feed_forward_length"] == 128
    assert f["tokenizer.ggml.model"] == "gpt2"
    assert f["tokenizer.ggml.pre"] == ("qwen2" if arch.startswith("qwen") else "gpt-2")
    assert len(f["tokenizer.ggml.tokens"]) == 384 and len(f["tokenizer.ggml.merges"]) > 0
    assert f["tokenizer.ggml.bos_token_id"] == 1 and f["tokenizer.ggml.eos_token_id"] == 2
    assert f["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_0
    heads = {"q_proj": 4, "k_proj": 2}
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    for prefix, ql in qls.items():
        layer, kind = prefix.split(".")[2], prefix.split(".")[-1]
        t = _reader_tensor(r, f"blk.{layer}.{names[kind]}.weight")
        assert t.tensor_type == gguf.GGMLQuantizationType.Q4_0
        want = ql.dequantize(torch.float32)
        if gguf_arch == "llama" and kind in heads:
            want = want[llama_row_permutation(want.shape[0], heads[kind])]
        np.testing.assert_array_equal(_dequant(t), want.numpy(), err_msg=prefix)
        if ql.bias is not None:
            b = _reader_tensor(r, f"blk.{layer}.{names[kind]}.bias")
            want_b = ql.bias.float()
            if gguf_arch == "llama" and kind in heads:
                want_b = want_b[llama_row_permutation(len(want_b), heads[kind])]
            np.testing.assert_array_equal(np.asarray(b.data), want_b.numpy())
    norm = _reader_tensor(r, "blk.1.ffn_norm.weight")
    assert norm.tensor_type == gguf.GGMLQuantizationType.F32
    np.testing.assert_array_equal(np.asarray(norm.data), state["model.layers.1.post_attention_layernorm.weight"].float().numpy())
    emb = _reader_tensor(r, "token_embd.weight")
    assert emb.tensor_type == gguf.GGMLQuantizationType.F16
    np.testing.assert_array_equal(np.asarray(emb.data), state["model.embed_tokens.weight"].numpy())
    assert _reader_tensor(r, "output.weight").tensor_type == gguf.GGMLQuantizationType.F16
    if arch == "qwen3":
        assert f["qwen3.attention.key_length"] == 32
        assert _reader_tensor(r, "blk.0.attn_q_norm.weight").tensor_type == gguf.GGMLQuantizationType.F32


def test_llama_permutation_matches_llama_cpp_convert():
    # llama.cpp's convert: reshape(n_head, 2, rows/n_head/2, ...).swapaxes(1, 2)
    w = torch.arange(24 * 3).reshape(24, 3)
    ref = w.reshape(3, 2, 4, 3).swapaxes(1, 2).reshape(24, 3)
    assert torch.equal(w[llama_row_permutation(24, 3)], ref)


@pytest.mark.parametrize("checkpoint_format", ["gptq", "gptq_v2"])
def test_asymmetric_layers_become_q4_1(tmp_path, checkpoint_format):
    ckpt, qls, _ = make_checkpoint(tmp_path / "ckpt", "qwen2", sym=False, group=64, checkpoint_format=checkpoint_format)
    r = gguf.GGUFReader(write_gguf(ckpt, tmp_path / "m.gguf"))
    t = _reader_tensor(r, "blk.0.ffn_up.weight")
    assert t.tensor_type == gguf.GGMLQuantizationType.Q4_1
    ql = qls["model.layers.0.mlp.up_proj"]
    m = (ql.scales.double() * ql.zeros.double()).T.repeat_interleave(64, 1).numpy()
    assert np.all(np.abs(_dequant(t) - ql.dequantize().numpy()) <= m * 2.0**-11 + 1e-7)
    assert r.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_1


def test_bf16_model_tied_embeddings(tmp_path):
    ckpt, qls, state = make_checkpoint(tmp_path / "ckpt", "llama", dtype=torch.bfloat16, tie=True, group=128, hidden=128)
    out = write_gguf(ckpt, tmp_path / "m.gguf")
    r = gguf.GGUFReader(out)
    names = {t.name for t in r.tensors}
    assert "output.weight" not in names  # tied: llama.cpp reuses token_embd
    emb = _reader_tensor(r, "token_embd.weight")
    assert emb.tensor_type == gguf.GGMLQuantizationType.BF16
    np.testing.assert_array_equal(_dequant(emb), state["model.embed_tokens.weight"].float().numpy())
    t = _reader_tensor(r, "blk.0.ffn_down.weight")  # K = 256: groups of 128 over 4 blocks each
    np.testing.assert_array_equal(_dequant(t), qls["model.layers.0.mlp.down_proj"].dequantize().numpy())


def test_unquantized_checkpoint_and_embedding_type(tmp_path):
    ckpt, _, state = make_checkpoint(tmp_path / "ckpt", "llama", quantize=False)
    r = gguf.GGUFReader(write_gguf(ckpt, tmp_path / "m.gguf", unquantized_type="f16", embedding_type="q8_0"))
    q = _reader_tensor(r, "blk.0.attn_q.weight")
    assert q.tensor_type == gguf.GGMLQuantizationType.F16
    want = state["model.layers.0.self_attn.q_proj.weight"][llama_row_permutation(64, 4)]
    np.testing.assert_array_equal(np.asarray(q.data), want.numpy())
    assert _reader_tensor(r, "token_embd.weight").tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert r.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16


def test_act_order_without_static_groups_is_a_clear_error(tmp_path):
    ckpt, _, _ = make_checkpoint(tmp_path / "ckpt", "llama", g_idx_perm=True)
    with pytest.raises(UnsupportedError, match="act-order without static groups.*static_groups=true"):
        write_gguf(ckpt, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists() and not list(tmp_path.glob(".m.gguf*"))


def test_unsupported_architecture_and_missing_tokenizer(tmp_path):
    ckpt, _, _ = make_checkpoint(tmp_path / "ckpt", "llama")
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt_neox"}))
    with pytest.raises(UnsupportedError, match="gpt_neox"):
        write_gguf(ckpt, tmp_path / "m.gguf")
    (ckpt / "config.json").write_text(json.dumps(cfg))
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(InputError, match="no tokenizer"):
        write_gguf(ckpt, tmp_path / "m.gguf")


def test_summary_types_and_bits_per_weight(tmp_path):
    ckpt, _, _ = make_checkpoint(tmp_path / "ckpt", "qwen3")
    s = read_gguf_summary(write_gguf(ckpt, tmp_path / "m.gguf"))
    assert s["architecture"] == "qwen3" and s["file_type"] == "MOSTLY_Q4_0"
    assert s["types"]["Q4_0"]["tensors"] == 14
    assert s["linear_bits_per_weight"] == 4.5
    assert s["vocab_size"] == 384 and s["tokenizer_pre"] == "qwen2"
    q = next(t for t in s["tensors"] if t["name"] == "blk.0.attn_q.weight")
    assert q["type"] == "Q4_0" and q["shape"] == [64, 128] and q["bpw"] == 4.5
    from quantkit.inspect import render, summarize

    text = render(summarize(tmp_path / "m.gguf"))  # `quantkit inspect FILE.gguf`
    assert "linear bits per weight  4.5" in text and "blk.0.attn_q.weight" in text and "Q4_0" in text


def test_summary_of_a_non_gguf_file(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(InputError, match="x.gguf"):
        read_gguf_summary(bad)
