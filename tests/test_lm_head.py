"""lm_head quantization on request (recipe quantize_lm_head, convert --quantize-lm-head): written in the GPTQ
layout under lm_head.*, read back by the reference loader, inspect and the GGUF writer; with tied embeddings the
embedding stays and lm_head is untied. The default keeps lm_head exactly as before."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import grid_errors, make_checkpoint
from quantkit import convert, inspect, recipes, reference
from quantkit.cli import main
from quantkit.errors import InputError
from quantkit.methods import rtn
from quantkit.source import TensorSource
from test_convert import tensors_of
from test_reference import fake_quant_model, perplexity

ROOT = Path(__file__).resolve().parent.parent
G32 = recipes.load("rdna3-w4a16-g32")
HEAD = recipes.override(G32, quantize_lm_head=True)
FAST_GPTQ = dict(method="gptq", calib_samples=8, calib_seq_len=64)


def source_tensors(directory: Path) -> dict[str, torch.Tensor]:
    with TensorSource(directory) as s:
        return {n: s.get(n).clone() for n in s.names()}


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def src(request, tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("lm_head") / "src", "llama", tie_word_embeddings=request.param)


def test_default_keeps_lm_head(tmp_path, src):
    tied = json.loads((src / "config.json").read_text())["tie_word_embeddings"]
    manifest = convert.convert(str(src), tmp_path / "default", G32, progress=False)
    out = tensors_of(tmp_path / "default")
    assert not any(n.startswith("lm_head.q") for n in out)
    original = source_tensors(src)
    if tied:
        assert "lm_head.weight" not in out
    else:
        assert torch.equal(out["lm_head.weight"], original["lm_head.weight"].to(torch.bfloat16))
    config = json.loads((tmp_path / "default" / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied and config["quantization_config"]["lm_head"] is False
    assert manifest["layers"]["lm_head"] == ("tied to the embeddings" if tied else "kept")
    assert inspect.summarize(tmp_path / "default")["lm_head"] == manifest["layers"]["lm_head"]
    # --keep-lm-head is the default: the same bytes
    kept = convert.convert(str(src), tmp_path / "kept", recipes.override(HEAD, quantize_lm_head=False), progress=False)
    assert kept["layers"]["quantized"] == manifest["layers"]["quantized"] == 14
    for f in (tmp_path / "default").glob("*.safetensors"):
        assert f.read_bytes() == (tmp_path / "kept" / f.name).read_bytes()


def test_quantized_lm_head_round_trips(tmp_path, src):
    tied = json.loads((src / "config.json").read_text())["tie_word_embeddings"]
    out_dir = tmp_path / "q"
    manifest = convert.convert(str(src), out_dir, HEAD, progress=False)
    out, original = tensors_of(out_dir), source_tensors(src)
    weight = original["model.embed_tokens.weight" if tied else "lm_head.weight"]
    vocab, hidden = weight.shape
    assert out["lm_head.qweight"].shape == (hidden // 8, vocab) and out["lm_head.qweight"].dtype == torch.int32
    assert out["lm_head.qzeros"].shape == (hidden // 32, vocab // 8)
    assert out["lm_head.scales"].shape == (hidden // 32, vocab) and out["lm_head.scales"].dtype == torch.bfloat16
    assert torch.equal(out["lm_head.g_idx"], torch.arange(hidden, dtype=torch.int32) // 32)
    assert "lm_head.weight" not in out
    # the embedding stays unquantized under its own name
    assert torch.equal(out["model.embed_tokens.weight"], original["model.embed_tokens.weight"].to(torch.bfloat16))
    config = json.loads((out_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    assert config["quantization_config"]["lm_head"] is True
    assert json.loads((out_dir / "quantize_config.json").read_text()) == config["quantization_config"]
    assert manifest["layers"]["lm_head"] == "quantized" and manifest["layers"]["quantized"] == 15
    assert manifest["recipe"]["quantize_lm_head"] is True and 0 < manifest["relative_error"]["lm_head"] < 0.2
    # the codes are those of round-to-nearest on the source weight, within half a scale of it
    with TensorSource(out_dir) as q:
        ql = reference.read_linears(q, q.config["quantization_config"])["lm_head"]
    expected = rtn.quantize(weight, bits=4, group_size=32, sym=True, scale_dtype=torch.bfloat16)
    assert torch.equal(ql.codes, expected.codes) and torch.equal(ql.scales, expected.scales)
    err, scale, inside = grid_errors(ql, weight.float())
    assert bool((err[inside] <= scale[inside] / 2 * (1 + 1e-5)).all())
    # the reference loader builds lm_head as a QuantLinear and does not tie it to the embedding
    model = reference.load_model(out_dir)
    assert isinstance(model.lm_head, reference.QuantLinear)
    x = torch.randn(2, 3, hidden)
    assert torch.allclose(model.lm_head(x), x @ expected.dequantize().T, atol=1e-5, rtol=1e-5)
    # transformers itself: the config says untied, so tie_weights leaves the dequantized lm_head alone
    fake = fake_quant_model(out_dir, torch.float32)
    assert fake.lm_head.weight.data_ptr() != fake.model.embed_tokens.weight.data_ptr()
    assert torch.equal(fake.lm_head.weight, ql.dequantize(torch.bfloat16).float())
    # inspect
    info = inspect.summarize(out_dir)
    assert info["lm_head"] == "quantized" and info["linears_quantized"] == 15
    assert info["lm_head_bits_per_weight"] == pytest.approx(4 + 16 / 32 + 4 / 32)


def test_perplexity_equals_fake_quant_and_lm_head_counts(tmp_path, src):
    out = tmp_path / "q"
    convert.convert(str(src), out, HEAD, progress=False)
    ours = perplexity(reference.load_model(out, dtype=torch.float32), out).ppl
    fake = perplexity(fake_quant_model(out, torch.float32), out).ppl
    assert abs(ours - fake) / fake < 1e-3
    # and the quantized lm_head is what ran: the model with lm_head kept scores differently
    convert.convert(str(src), tmp_path / "kept", G32, progress=False)
    kept = perplexity(reference.load_model(tmp_path / "kept", dtype=torch.float32), tmp_path / "kept").ppl
    assert abs(ours - kept) / kept > 1e-4


def test_group_size_must_divide_lm_head_k(tmp_path):
    src = make_checkpoint(tmp_path / "src", "llama", hidden_size=96, intermediate_size=128, head_dim=24,
                          tie_word_embeddings=True)
    recipe = recipes.override(HEAD, group_size=64, skip=("model.layers.*",))
    with pytest.raises(InputError, match=r"^lm_head\.weight: group size 64 does not divide K=96; .*--keep-lm-head"):
        convert.convert(str(src), tmp_path / "out", recipe, progress=False)
    assert not (tmp_path / "out").exists()
    manifest = convert.convert(str(src), tmp_path / "out", recipes.override(recipe, quantize_lm_head=False), progress=False)
    assert manifest["layers"]["quantized"] == 0


def test_recipe_field_and_cli(tmp_path, tiny_llama):
    bad = tmp_path / "bad.yaml"
    bad.write_text("quantize_lm_head: sometimes\n")
    with pytest.raises(InputError, match="quantize_lm_head must be true or false"):
        recipes.load(str(bad))
    good = tmp_path / "head.yaml"
    good.write_text("quantize_lm_head: true\n")
    assert recipes.load(str(good)).quantize_lm_head is True
    assert recipes.load(None).quantize_lm_head is False
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(tiny_llama), "--out", str(tmp_path / "a"), "--recipe", str(good)])
    assert result.exit_code == 0, result.output
    assert "lm_head.qweight" in tensors_of(tmp_path / "a")
    result = runner.invoke(main, ["convert", str(tiny_llama), "--out", str(tmp_path / "b"), "--recipe", str(good),
                                  "--keep-lm-head"])
    assert result.exit_code == 0, result.output
    assert "lm_head.qweight" not in tensors_of(tmp_path / "b")
    result = runner.invoke(main, ["convert", str(tiny_llama), "--out", str(tmp_path / "c"), "--quantize-lm-head"])
    assert result.exit_code == 0, result.output
    assert "lm_head.qweight" in tensors_of(tmp_path / "c")
    info = json.loads(runner.invoke(main, ["inspect", str(tmp_path / "c"), "--json"]).output)
    assert info["lm_head"] == "quantized"


def test_gguf_output_weight_in_llama_cpp(tmp_path, src):
    """--format gptq,gguf: output.weight is Q4_0 from the same codes, and llama.cpp's logits match the reference."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    import gguf

    recipe = recipes.override(HEAD, formats="gptq,gguf")
    out = tmp_path / "q"
    convert.convert(str(src), out, recipe, progress=False)
    path = next(out.glob("*.gguf"))
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["output.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_0
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.BF16
    with TensorSource(out) as q:
        ql = reference.read_linears(q, q.config["quantization_config"])["lm_head"]
    t = tensors["output.weight"]
    deq = gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)])
    np.testing.assert_array_equal(deq, ql.dequantize().numpy())

    tokens = torch.randint(3, 500, (48,), generator=torch.Generator().manual_seed(0)).tolist()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(tokens), n_batch=len(tokens), n_ubatch=len(tokens),
                          logits_all=True, n_threads=2, n_threads_batch=2, verbose=False)
    try:
        llm.eval(tokens)
        ours = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()
    with torch.inference_mode():
        ref = reference.load_model(out, dtype=torch.float32)(torch.tensor([tokens])).logits[0].numpy()
        kept = reference.load_model(out, dtype=torch.float32)
        kept.lm_head = torch.nn.Linear(ql.in_features, ql.out_features, bias=False)
        with TensorSource(src) as s:
            name = "lm_head.weight" if "lm_head.weight" in s else "model.embed_tokens.weight"
            kept.lm_head.weight.copy_(s.get(name).float())
        unquantized_head = kept(torch.tensor([tokens])).logits[0].numpy()
    # llama.cpp rounds activations to 8 bits for 4-bit dot products: close, not bit-equal
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err < 0.05, f"max |diff| is {err:.3%} of the largest logit"
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.999
    # and llama.cpp ran the quantized output.weight: it is closer to that than to the unquantized lm_head
    assert np.abs(ours - ref).mean() < 0.5 * np.abs(ours - unquantized_head).mean()


def _lm_head_inputs(directory: Path, tokens: torch.Tensor) -> torch.Tensor:
    """The inputs lm_head sees on ``tokens`` through the quantized model (final norm of the last block's output)."""
    model = reference.load_model(directory, dtype=torch.float32)
    seen = []
    handle = model.lm_head.register_forward_hook(lambda m, args, out: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.inference_mode():
        for b in range(0, tokens.shape[0], 4):
            model(tokens[b : b + 4])
    handle.remove()
    return torch.cat(seen)


def test_gptq_solves_lm_head_against_its_inputs(tmp_path, tiny_llama):
    from transformers import AutoTokenizer

    from quantkit import calibration
    from quantkit.methods.gptq_solver import output_error

    out = tmp_path / "gptq"
    manifest = convert.convert(str(tiny_llama), out, recipes.override(HEAD, **FAST_GPTQ), progress=False)
    record = manifest["method_summary"]["per_linear"]["lm_head"]
    assert "fallback" not in record and record["tokens"] == 8 * 64
    assert manifest["method_summary"]["linears_gptq"] == 15
    # the Hessian of lm_head's real inputs (final norm over the quantized blocks, calibration tokens): GPTQ's
    # lm_head has a clearly smaller output error on it than round-to-nearest's
    tokens = calibration.build(AutoTokenizer.from_pretrained(tiny_llama), None, samples=8, seq_len=64).tokens
    x = _lm_head_inputs(out, tokens)
    h = x.T @ x / x.shape[0]
    with TensorSource(out) as q:
        ql = reference.read_linears(q, q.config["quantization_config"])["lm_head"]
    weight = source_tensors(tiny_llama)["lm_head.weight"].float()
    nearest = rtn.quantize(weight, bits=4, group_size=32, sym=True, scale_dtype=torch.bfloat16)
    ours, rtn_err = output_error(weight, ql.dequantize(), h), output_error(weight, nearest.dequantize(), h)
    assert ours == pytest.approx(record["output_error"], rel=1e-2)
    assert ours < 0.8 * rtn_err, (ours, rtn_err)


def test_gptq_act_order_lm_head_sets_desc_act(tmp_path, tiny_llama):
    """Dynamic act-order groups in lm_head alone (every decoder linear skipped) still make desc_act true."""
    recipe = recipes.override(HEAD, **FAST_GPTQ, gptq_static_groups=False, skip=("model.layers.*",))
    manifest = convert.convert(str(tiny_llama), tmp_path / "q", recipe, progress=False)
    assert manifest["layers"]["quantized"] == 1
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["desc_act"] is True
    g_idx = tensors_of(tmp_path / "q")["lm_head.g_idx"]
    assert not torch.equal(g_idx, torch.arange(g_idx.numel(), dtype=torch.int32) // 32)


def test_gptq_lm_head_resumes_to_the_same_bytes(tmp_path, tiny_llama):
    """Killed after the last block, the rerun rebuilds lm_head's inputs by replaying the saved blocks."""
    from quantkit.methods import gptq

    straight = tmp_path / "straight"
    convert.convert(str(tiny_llama), straight, recipes.override(HEAD, **FAST_GPTQ), progress=False)
    out = tmp_path / "resumed"
    cmd = [sys.executable, "-m", "quantkit", "convert", str(tiny_llama), "--out", str(out), "--method", "gptq",
           "--calib-samples", "8", "--calib-seq-len", "64", "--quantize-lm-head"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), gptq.SNAPSHOT_ENV: "100000"}
    killed = subprocess.run(cmd, env={**env, gptq.KILL_AFTER_ENV: "1"}, capture_output=True, text=True)
    assert killed.returncode == 17, killed.stderr[-2000:]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "replaying the saved quantized block" in done.stderr
    for f in straight.glob("*.safetensors"):
        assert f.read_bytes() == (out / f.name).read_bytes()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_kernel_backend_runs_the_quantized_lm_head(tmp_path, tiny_llama):
    """The kernel backend builds its modules from the same checkpoint: lm_head runs on the W4A16 kernels and
    agrees with the reference backend."""
    from quantkit.eval import backends
    from quantkit.kernels import kernel_available
    from test_eval_gpu import assert_kernel_agrees

    ok, why = kernel_available()
    if not ok:
        pytest.skip(f"W4A16 kernels unavailable: {why}")
    out = tmp_path / "q"
    convert.convert(str(tiny_llama), out, HEAD, progress=False)
    kernel = backends.load(out, "kernel", dtype=torch.bfloat16, device="cuda")
    ref = backends.load(out, "reference", dtype=torch.bfloat16, device="cuda")
    assert type(kernel.lm_head).__name__ == "W4A16Linear"
    assert type(kernel.model.layers[0].mlp.down_proj).__name__ == "W4A16Linear"
    assert_kernel_agrees(kernel, ref)
