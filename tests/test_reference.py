"""The reference loader: a quantized directory loads back into transformers with QuantLinear modules, and its
perplexity equals that of the same weights fake-quantized in bf16 (loaded by transformers itself)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import make_checkpoint, shared_text
from quantkit import convert, recipes, reference
from quantkit.eval import ppl
from test_convert import tensors_of
from test_packing import slow_unpack_qweight, slow_unpack_qzeros


def fake_quant_model(directory, dtype):
    """The original architecture loaded by transformers with every linear's weight = dequantized bf16 weight."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = reference.dequantized_state_dict(directory, dtype=torch.bfloat16)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    model.tie_weights()
    return model.eval()


def perplexity(model, directory, ctx=128, windows=4):
    tok = AutoTokenizer.from_pretrained(directory)
    ids = ppl.tokenize(tok, shared_text("ladysusan.txt").read_text())
    return ppl.score(model, ppl.windows(ids, ctx=ctx, max_windows=windows), progress=False)


def test_quantlinear_matches_dequantized_matmul(tmp_path, tiny_llama):
    """QuantLinear computes x W^T with W decoded from the stored qweight/qzeros/scales/g_idx by test_packing's
    slow unpacker (GPTQ v1 stores zero - 1), independently of the loader's own unpacking."""
    out = tmp_path / "q"
    convert.convert(str(tiny_llama), out, recipes.load("w4a16-g32-asym"), progress=False)
    model = reference.load_model(out)
    name = "model.layers.0.mlp.down_proj"
    layer = model.get_submodule(name)
    assert isinstance(layer, reference.QuantLinear)
    stored = tensors_of(out)
    codes = torch.tensor(slow_unpack_qweight(stored[f"{name}.qweight"]), dtype=torch.float32)  # [N, K]
    zeros = torch.tensor(slow_unpack_qzeros(stored[f"{name}.qzeros"], codes.shape[0]), dtype=torch.float32) + 1
    g = stored[f"{name}.g_idx"].long()
    weight = stored[f"{name}.scales"].float()[g].T * (codes - zeros[g].T)
    x = torch.randn(3, 5, layer.in_features)
    assert torch.allclose(layer(x), x @ weight.T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_perplexity_equals_fake_quant_bf16(tmp_path, arch):
    src = make_checkpoint(tmp_path / "src", arch)
    out = tmp_path / "q"
    convert.convert(str(src), out, recipes.load("rdna3-w4a16-g32"), progress=False)
    ours = perplexity(reference.load_model(out, dtype=torch.float32), out).ppl
    fake = perplexity(fake_quant_model(out, torch.float32), out).ppl
    assert abs(ours - fake) / fake < 1e-3


def test_moe_loads_through_dequantized_weights(tmp_path):
    src = make_checkpoint(tmp_path / "src", "qwen3_moe")
    out = tmp_path / "q"
    convert.convert(str(src), out, recipes.load("rdna3-w4a16-g32"), progress=False)
    model = reference.load_model(out)
    experts = model.model.layers[0].mlp.experts
    state = reference.dequantized_state_dict(out, dtype=torch.float32)
    # transformers fused experts [E, 2*I, H] = gate over up; expert 1's gate rows are the dequantized gate_proj
    gate = state["model.layers.0.mlp.experts.1.gate_proj.weight"]
    assert torch.equal(experts.gate_up_proj[1, : gate.shape[0]], gate)
    assert torch.isfinite(perplexity(model, out, windows=1).nll).all()


def test_not_a_quantized_dir(tiny_llama):
    from quantkit.errors import InputError

    with pytest.raises(InputError, match="no GPTQ quantization_config"):
        reference.load_model(tiny_llama)


@pytest.mark.slow
def test_standin_perplexity_equals_fake_quant(standin_g32):
    """The real stand-in: reference QuantLinear and transformers' own bf16 fake-quant agree within 0.1%."""
    ours = perplexity(reference.load_model(standin_g32), standin_g32, ctx=512, windows=2).ppl
    fake = perplexity(fake_quant_model(standin_g32, torch.float32), standin_g32, ctx=512, windows=2).ppl
    assert abs(ours - fake) / fake < 1e-3
    info = json.loads((standin_g32 / "config.json").read_text())["quantization_config"]
    assert info["group_size"] == 32 and info["sym"] is True
