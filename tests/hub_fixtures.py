"""Fixtures for the Hub tests: a converted stand-in artifact and a fake Hub the real huggingface_hub client talks to.

The stand-in is what convert + eval leave behind, built small: a tiny random Llama config, a word-level
tokenizer, GPTQ tensors packed by quantkit.formats.gptq from QuantizedLinear layers, the manifest and an
eval JSON whose weights_digest matches. Optionally sharded, optionally with a GGUF file.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hubserver import FakeHub
from quantkit.formats import gptq
from quantkit.manifest import EVAL_JSON, MANIFEST, weights_digest
from quantkit.methods import rtn
from quantkit.qlinear import QuantizedLinear

TOKEN = "hf_QuantkitTestSecretToken0123456789"
OTHER_TOKEN = "hf_SomebodyElsesToken9876543210abcd"
READ_TOKEN = "hf_ReadOnlyToken000000000000000000"
USER, ORG, OTHER_USER = "alice", "quant-lab", "bob"
BASE_MODEL = "tiny-org/tiny-llama"

HIDDEN, INTERMEDIATE, LAYERS, VOCAB, GROUP = 64, 128, 2, 40, 32
LINEARS = {
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN), "self_attn.v_proj": (HIDDEN, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN), "mlp.gate_proj": (INTERMEDIATE, HIDDEN),
    "mlp.up_proj": (INTERMEDIATE, HIDDEN), "mlp.down_proj": (HIDDEN, INTERMEDIATE),
}


def _rtn(weight: torch.Tensor) -> QuantizedLinear:
    """Symmetric 4-bit round-to-nearest (quantkit.methods.rtn, fp16 scales): enough to make real GPTQ tensors."""
    return rtn.quantize(weight, bits=4, group_size=GROUP, sym=True, scale_dtype=torch.float16, search=False)


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=g).half(),
           "model.norm.weight": torch.ones(HIDDEN, dtype=torch.float16),
           "lm_head.weight": torch.randn(VOCAB, HIDDEN, generator=g).half()}
    for i in range(LAYERS):
        prefix = f"model.layers.{i}"
        out[f"{prefix}.input_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.float16)
        out[f"{prefix}.post_attention_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.float16)
        for name, shape in LINEARS.items():
            packed = gptq.pack(_rtn(torch.randn(*shape, generator=g)), checkpoint_format="gptq")
            out.update({f"{prefix}.{name}.{suffix}": t for suffix, t in packed.items()})
    return out


def _tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "<s>", "</s>"] + [f"w{i}" for i in range(VOCAB - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>").save_pretrained(directory)


def _gguf(path: Path) -> None:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_tensor("token_embd.weight", np.arange(VOCAB * HIDDEN, dtype=np.float32).reshape(VOCAB, HIDDEN))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def make_artifact(directory: Path, *, shards: int = 1, with_gguf: bool = False, seed: int = 0,
                  evaluation: dict | None = None) -> Path:
    """Write a converted + evaluated stand-in into ``directory`` (created) and return it."""
    from transformers import LlamaConfig

    directory.mkdir(parents=True, exist_ok=True)
    qcfg = gptq.quantization_config(
        bits=4, group_size=GROUP, sym=True, desc_act=False, static_groups=False, checkpoint_format="gptq",
        method="rtn", damp_percent=None, true_sequential=True, meta={"quantizer": ["quantkit:0.1.0"], "recipe": "w4a16-g32"},
    )
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128).to_dict()
    config["quantization_config"] = qcfg
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "quantize_config.json").write_text(json.dumps(qcfg, indent=2))
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    _tokenizer(directory)
    tensors = _tensors(seed)
    if shards == 1:
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        names = sorted(tensors)
        weight_map = {}
        for i in range(shards):
            shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = names[i::shards]
            save_file({n: tensors[n] for n in part}, str(directory / shard), metadata={"format": "pt"})
            weight_map.update({n: shard for n in part})
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if with_gguf:
        _gguf(directory / "tiny-Q4_0.gguf")
    (directory / MANIFEST).write_text(json.dumps({
        "tool": "quantkit", "version": "0.1.0", "source": {"model": BASE_MODEL, "model_type": "llama"},
        "recipe": {"name": "w4a16-g32", "method": "rtn", "bits": 4, "group_size": GROUP, "sym": True},
        "relative_error": {"model.layers.0.self_attn.q_proj": 0.081}, "timings": {"total_s": 0.5},
    }, indent=2))
    data = evaluation if evaluation is not None else {
        "perplexity": {"text": "wikitext-2 test", "ctx": 512, "windows": 40,
                       "quantized": {"ppl": 12.3456, "stderr": 0.21}, "baseline": {"ppl": 11.9, "stderr": 0.2},
                       "kl_divergence": 0.0421, "top1_agreement": 0.913},
        "throughput": {"device": "NVIDIA H100 80GB HBM3", "rows": [
            {"batch": 1, "prefill_tok_s": 9000.5, "decode_tok_s": 150.25, "baseline_prefill_tok_s": 9500.0, "baseline_decode_tok_s": 95.0},
            {"batch": 8, "prefill_tok_s": 31000.0, "decode_tok_s": 900.75, "baseline_prefill_tok_s": 33000.0, "baseline_decode_tok_s": 600.0},
        ]},
    }
    (directory / EVAL_JSON).write_text(json.dumps({"weights_digest": weights_digest(directory), **data}, indent=2))
    (directory / "quantkit_eval.md").write_text("# eval\n")
    return directory


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running FakeHub with users alice (org quant-lab), bob and a read-only token; the client pointed at it.

    huggingface_hub reads HF_ENDPOINT & co. once at import, so the constants are patched as well as the
    environment (subprocesses see the environment). Xet is off: the fake speaks plain LFS only.
    Back-off waits are shortened so that retry tests run in well under a second each.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import _http
    import quantkit.hub.push as push_module

    server = FakeHub().start()
    server.add_user(TOKEN, USER, orgs=[ORG])
    server.add_user(OTHER_TOKEN, OTHER_USER)
    server.add_user(READ_TOKEN, USER, orgs=[ORG], role="read")
    home = tmp_path / "hf_home"
    env = {"HF_ENDPOINT": server.url, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_TOKEN": TOKEN,
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(push_module, "RETRY_WAITS", (0.01, 0.02, 0.04, 0.08))
    real_sleep = _http.time.sleep
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(**{**vars(_http.time), "sleep": lambda s: real_sleep(min(s, 0.02))}))
    _http.close_session()
    try:
        yield server
    finally:
        server.stop()
        _http.close_session()
