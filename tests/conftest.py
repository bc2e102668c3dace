"""Shared test fixtures: tiny random checkpoints of real architectures, the shared texts, the stand-in model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # helper modules such as hubserver live beside the tests

SHARED_TEXT = TESTS.parent.parent / "shared" / "data" / "text"

# Small configs of real architectures: every linear of a block has K divisible by 32 and 64.
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512)
ARCH_EXTRA = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {},
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, decoder_sparse_step=1),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
}


def grid_errors(ql, w: torch.Tensor):
    """(error, |scale|, inside) per weight: |dequantized - w|, its group's |scale|, and whether w lies within
    the ends of its group's grid (a symmetric scale may be negative: llama.cpp's d = peak / -8)."""
    scale = ql.scales.float()[ql.g_idx.long()].T
    zero = ql.zeros.float()[ql.g_idx.long()].T
    ends = torch.stack([scale * (0 - zero), scale * ((1 << ql.bits) - 1 - zero)])
    deq = ql.dequantize()
    inside = (w >= ends.amin(0)) & (w <= ends.amax(0))
    # outside the grid a weight must land on the nearest end
    nearest = torch.where(w < ends.amin(0), ends.amin(0), ends.amax(0))
    assert torch.allclose(deq[~inside], nearest[~inside])
    return (deq - w).abs(), scale.abs(), inside


def shared_text(name: str) -> Path:
    path = SHARED_TEXT / name
    if not path.is_file():
        pytest.skip(f"{path} is missing: the shared data folder must sit beside the repository")
    return path


def train_tokenizer(directory: Path, vocab_size: int = 512) -> None:
    """A small byte-level BPE tokenizer trained on the fixture text, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(shared_text("ladysusan.txt"))], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>").save_pretrained(directory)


def make_checkpoint(directory: Path, model_type: str = "llama", *, seed: int = 0, dtype=torch.bfloat16, **overrides) -> Path:
    """A random model of ``model_type`` saved as a HF safetensors checkpoint with a tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **{**TINY, **ARCH_EXTRA[model_type], **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():  # weights with a real spread, so that quantization has something to do
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.05)
    model.save_pretrained(directory)
    train_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture(scope="session")
def standin_checkpoint() -> Path:
    """The SmolLM2-135M stand-in as a HF checkpoint (dequantized from its GGUF once, then cached)."""
    from quantkit import source, standin
    from quantkit.errors import InputError

    try:
        return source.resolve(str(standin.gguf_path()))
    except InputError as e:
        pytest.skip(f"stand-in model unavailable: {e}")


@pytest.fixture(scope="session")
def standin_g32(tmp_path_factory, standin_checkpoint) -> Path:
    """The stand-in converted with the default recipe (RTN, symmetric, group 32), shared by several tests."""
    from quantkit import convert, recipes

    out = tmp_path_factory.mktemp("standin") / "g32"
    convert.convert(str(standin_checkpoint), out, recipes.load("rdna3-w4a16-g32"), progress=False)
    return out
