"""quantkit eval: perplexity with KL divergence and top-1 agreement, the CPU throughput path, the reports, the CLI.

Everything here runs on a CPU in seconds on tiny models: a tiny random Llama (tests/test_gguf.py's fixture)
converted by quantkit.convert; GPU-only paths are in tests/test_eval_gpu.py."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from quantkit.errors import InputError
from quantkit.eval import backends, ppl, render, report, throughput, validate
from quantkit.manifest import EVAL_JSON, weights_digest
from greedy_check import check_greedy_token
from test_gguf import make_checkpoint

CTX = 64
TINY_SETTINGS = throughput.Settings(batches=(1, 2), prompt_len=8, gen_len=3, warmup=0, repeats=2)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(unquantized tiny Llama dir, its quantized conversion dir with a GGUF beside the safetensors)."""
    from quantkit.convert import convert
    from quantkit.recipes import Recipe

    root = tmp_path_factory.mktemp("eval")
    base, _, _ = make_checkpoint(root / "base", "llama", quantize=False, dtype=torch.float16, seed=1)
    recipe = Recipe(name="test-eval", method="rtn", group_size=32, sym=True, dtype="fp16",
                    formats=("gptq", "gguf")).validate("test")
    quant = root / "quant"
    convert(str(base), quant, recipe, progress=False)
    return base, quant


@pytest.fixture(scope="module")
def wins(checkpoints):
    label, w = validate.text_windows(checkpoints[1], None, ctx=CTX, max_windows=3)
    return w


def test_kl_is_zero_and_top1_agreement_one_against_itself(checkpoints, wins):
    model = backends.load(checkpoints[1], "reference", dtype=torch.float32, device="cpu")
    scores, base_scores, agreement = ppl.score_against(model, model, wins, progress=False)
    d = agreement.to_dict()
    assert d["kl_divergence"] == 0 and d["kl_divergence_max"] == 0
    assert d["top1_agreement"] == 1
    assert scores.ppl == base_scores.ppl
    assert agreement.tokens == scores.tokens == wins.shape[0] * (CTX - 1)
    assert math.isfinite(scores.stderr) and scores.stderr > 0


def test_kl_is_positive_for_a_perturbed_model(checkpoints, wins):
    model = validate.load_baseline(str(checkpoints[0]), dtype=torch.float32, device="cpu")
    other = copy.deepcopy(model)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in other.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    scores, base_scores, agreement = ppl.score_against(other, model, wins, progress=False)
    d = agreement.to_dict()
    assert d["kl_divergence"] > 1e-3 and math.isfinite(d["kl_divergence_stderr"])
    assert d["kl_divergence_p99"] <= d["kl_divergence_max"]
    assert 0 <= d["top1_agreement"] < 1
    assert math.isfinite(scores.stderr) and math.isfinite(base_scores.stderr)


def test_vocabulary_mismatch_is_a_clear_error():
    with pytest.raises(Exception, match="one tokenizer and vocabulary"):
        ppl.compare_window(torch.zeros(1, 3, 5), torch.zeros(1, 3, 6))


def test_quantized_against_its_baseline_and_the_dense_twin(checkpoints, wins):
    """The quantized model vs the original: KL > 0; vs its own dequantized weights in nn.Linear: KL 0."""
    base_dir, quant = checkpoints
    section = validate.evaluate_perplexity(quant, baseline=str(base_dir), ctx=CTX, max_windows=3, device="cpu",
                                           progress=False)
    assert section["backend"] == "reference"
    assert section["kl_divergence"] > 0 and 0 < section["top1_agreement"] <= 1
    assert section["baseline"]["model"] == str(base_dir)
    model = backends.load(quant, "reference", dtype=torch.float32, device="cpu")
    dense = validate.dense_model(quant, dtype=torch.float32, device="cpu")
    _, _, agreement = ppl.score_against(model, dense, wins[:1], progress=False)
    assert agreement.to_dict()["kl_divergence"] == 0


def test_cpu_throughput_runs_and_says_it_is_not_meaningful():
    from quantkit.eval import random_weights
    from quantkit.reference import QuantLinear

    model, base, info = random_weights.build("tiny-llama", group_size=32, dtype=torch.float32, device="cpu",
                                             module_factory=QuantLinear, progress=False)
    assert info["quantized_linears"] == 2 * 7
    section = throughput.measure(model, base, settings=TINY_SETTINGS, same_weights=True, progress=False)
    assert section["meaningful"] is False and "not meaningful" in section["note"]
    assert section["cuda_graphs"] is False and section["environment"]["device_type"] == "cpu"
    assert section["decode_attention"] == "sdpa"  # asked for "split" (the default), which runs on GPUs only
    assert [r["batch"] for r in section["rows"]] == [1, 2]
    for row in section["rows"]:
        for key in ("prefill_tok_s", "decode_tok_s", "baseline_prefill_tok_s", "baseline_decode_tok_s"):
            assert row[key] > 0
        assert row["quantized"]["decode"]["samples"] == 2
    assert all(c["passed"] for c in section["checks"] if "passed" in c)
    assert section["checks"][0]["kl_divergence"] == 0  # reference QuantLinear vs the same dequantized weights
    # the first decode step's check compares one position a row of the first batch: said next to its top-1 figure
    first_step = [c for c in section["checks"] if "first decode step" in c["name"]]
    assert len(first_step) == 1 and first_step[0]["batch"] == 1 and first_step[0]["positions"] == 1, section["checks"]
    table = render.throughput_table(section)
    assert f"(over {section['checks'][0]['positions']} positions)" in table and "(over 1 position) PASSED" in table


def test_random_weights_can_quantize_lm_head(tmp_path):
    from quantkit.eval import random_weights, validate
    from quantkit.reference import QuantLinear

    model, base, info = random_weights.build("tiny-llama", group_size=32, dtype=torch.float32, device="cpu",
                                             module_factory=QuantLinear, progress=False, quantize_lm_head=True)
    assert info["quantized_linears"] == 2 * 7 + 1 and info["lm_head_quantized"]
    assert isinstance(model.lm_head, QuantLinear) and isinstance(base.lm_head, torch.nn.Linear)
    assert not torch.equal(base.lm_head.weight, base.get_input_embeddings().weight)  # untied, embedding untouched
    x = torch.randn(3, base.lm_head.in_features)
    torch.testing.assert_close(model.lm_head(x), base.lm_head(x), rtol=1e-5, atol=1e-5)  # the same 4-bit weights
    with pytest.raises(InputError, match="--quantize-lm-head is for --random-weights"):
        validate.evaluate(tmp_path, quantize_lm_head=True, perplexity=False)


def test_greedy_token_is_argmax_in_two_stages():
    from quantkit.eval import greedy

    assert greedy.greedy_chunk(128256) == 1002 and greedy.greedy_chunk(49152) == 1024
    assert greedy.greedy_chunk(151936) == 128 and greedy.greedy_chunk(50021) == 0  # 50021 is prime
    check_greedy_token("cpu")


def _in_triton_interpreter(code: str) -> None:
    """Run code (from tests/, where the check modules are) in a fresh process with TRITON_INTERPRET=1; it must pass."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def test_greedy_token_in_one_launch_in_the_triton_interpreter():
    """quantkit.eval.greedy's one-launch kernel on the CPU through Triton's interpreter (tests/greedy_check.py), where
    Triton is installed; the GPU test runs it compiled."""
    pytest.importorskip("triton")
    code = "import greedy_check; greedy_check.check_greedy_into('cpu')"
    _in_triton_interpreter(code)


def test_greedy_token_in_one_launch_falls_back_and_orders_its_atomics(monkeypatch):
    """greedy.ONE_LAUNCH (its default: test_measured_options_are_on_unless_the_environment_turns_them_off) off: a run
    records two stages; on, where Triton cannot run (a CPU without its interpreter) greedy_into is greedy_token and a
    copy, and a run records two stages there; compiled for sm_90 here, the kernel's programs fold their maxima into the
    row's key (a relaxed 64-bit atomic maximum), then, after a barrier, the same thread's acq_rel add on the row's
    counter, and the last to arrive takes the key in an acq_rel exchange."""
    from quantkit.eval import greedy

    monkeypatch.setattr(greedy, "ONE_LAUNCH", False)
    assert greedy.record(torch.device("cuda")) == "two stages"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(greedy, "ONE_LAUNCH", True)
    logits = torch.randn(3, 1000, generator=torch.Generator().manual_seed(4))
    token = torch.zeros(3, 1, dtype=torch.long)
    assert not greedy.one_launch_runs(logits) and greedy.record(logits.device) == "two stages"
    greedy.greedy_into(logits, token)
    assert torch.equal(token, logits.argmax(-1, keepdim=True))
    triton = pytest.importorskip("triton")
    assert greedy.record(torch.device("cuda")) == "one launch"
    from triton.backends.compiler import GPUTarget

    kernel = greedy._greedy
    types = {"logits_ptr": "*bf16", "out_ptr": "*i64", "key_ptr": "*i64", "count_ptr": "*i32"}
    signature = {n: "constexpr" if n == "BLOCK" else types.get(n, "i32") for n in kernel.arg_names}
    src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs={"BLOCK": greedy.BLOCK})
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": greedy.NUM_WARPS}).asm["ptx"]
    lines = [line.split("//")[0].strip() for line in ptx.splitlines()]
    (fold,) = [i for i, line in enumerate(lines) if ".max.s64" in line]
    (add,) = [i for i, line in enumerate(lines) if "atom." in line and ".add" in line]
    (take,) = [i for i, line in enumerate(lines) if "atom." in line and ".exch" in line]
    assert ".relaxed" in lines[fold] and ".gpu" in lines[fold] and fold < add < take
    assert all(q in lines[add] for q in (".gpu", ".acq_rel")) and ".acq_rel" in lines[take]
    assert any(line.startswith("bar.sync") for line in lines[fold:add])
    assert lines[fold].split()[0] == lines[add].split()[0]  # the same predicate: the same thread


def test_combo_kernels_option_reaches_inductor_only(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: seen.append(kw) or model)
    monkeypatch.setattr(throughput.fuse, "INDUCTOR_PDL", False)  # inductor's other option, tested on its own
    for combo in (False, True):
        monkeypatch.setattr(throughput, "COMBO_KERNELS", combo)
        for backend in ("inductor", "eager"):
            throughput._compiled(torch.nn.Linear(2, 2), backend)
    assert [kw["options"] for kw in seen] == [None, None, {"combo_kernels": True}, None]
    throughput._compiled(torch.nn.Linear(2, 2), "inductor", combo_kernels=False)  # the caller's choice over the default
    monkeypatch.setattr(throughput, "COMBO_KERNELS", False)
    throughput._compiled(torch.nn.Linear(2, 2), "inductor", combo_kernels=True)
    assert [kw["options"] for kw in seen[4:]] == [None, {"combo_kernels": True}]
    assert all(kw["dynamic"] is True for kw in seen)


@pytest.mark.parametrize("flag, variable", [("throughput.COMBO_KERNELS", "QUANTKIT_COMBO_KERNELS"),
                                            ("decode_attention.PDL", "QUANTKIT_ATTENTION_PDL"),
                                            ("decode_attention.FUSED_COMBINE", "QUANTKIT_SPLIT_KV_FUSED_COMBINE"),
                                            ("fuse.INDUCTOR_PDL", "QUANTKIT_INDUCTOR_PDL"),
                                            ("greedy.ONE_LAUNCH", "QUANTKIT_GREEDY_ONE_LAUNCH")])
def test_measured_options_are_on_unless_the_environment_turns_them_off(flag, variable):
    probe = f"from quantkit.eval import decode_attention, fuse, greedy, throughput; print({flag})"
    for value, expected in ((None, "True"), ("0", "False"), ("1", "True")):
        env = {k: v for k, v in os.environ.items() if k != variable}
        env.update({} if value is None else {variable: value})
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected, (value, out.stdout, out.stderr)


def test_rope_in_qkv_is_off_unless_the_environment_turns_it_on():
    probe = "from quantkit.eval import fuse; print(fuse.ROPE_IN_QKV)"
    for env_value, expected in ((None, "False"), ("1", "True"), ("0", "False")):
        env = {k: v for k, v in os.environ.items() if k != "QUANTKIT_ROPE_IN_QKV"}
        env.update({} if env_value is None else {"QUANTKIT_ROPE_IN_QKV": env_value})
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected, (env_value, out.stdout, out.stderr)


def test_norm_fold_is_off_unless_the_environment_turns_it_on():
    probe = "from quantkit.eval import fuse; print(fuse.NORM_FOLD, fuse.NORM_FOLD_ROWS)"
    for env_value, expected in ((None, "False 1"), ("1", "True 1"), ("0", "False 1")):
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTKIT_NORM_FOLD")}
        env.update({} if env_value is None else {"QUANTKIT_NORM_FOLD": env_value})
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected, (env_value, out.stdout, out.stderr)


def test_throughput_settings_errors():
    with pytest.raises(Exception, match="--batch"):
        throughput.parse_batches("1,x")
    with pytest.raises(Exception, match="positive"):
        throughput.parse_batches("0")
    with pytest.raises(Exception, match="--repeats"):
        throughput.Settings(repeats=0).validate()


def test_random_weights_config_errors(tmp_path):
    from quantkit.eval import random_weights

    with pytest.raises(Exception, match="llama-3-8b"):
        random_weights.config_path("no-such-model")
    bad = tmp_path / "config.json"
    bad.write_text("{}")
    with pytest.raises(Exception, match="model_type"):
        random_weights.load_config(bad, dtype=torch.float32)


def _fake_section() -> dict:
    return {"device": "CPU", "environment": throughput.environment("cpu", torch.float32), "meaningful": False,
               "note": throughput.CPU_NOTE, "settings": vars(TINY_SETTINGS), "cuda_graphs": False, "checks": [],
               "rows": [{"batch": b, "prefill_tok_s": 10.0 * b, "decode_tok_s": 2.0 * b, "baseline_prefill_tok_s": 9.0 * b,
                         "baseline_decode_tok_s": 1.0 * b, "prefill_speedup": 1.11, "decode_speedup": 2.0,
                         "quantized": {"decode": {"spread_pct": 1.0}}, "baseline": {"decode": {"spread_pct": 2.0}}}
                        for b in (1, 8)]}


def _fake_result(directory):
    return {"weights_digest": weights_digest(directory), "model": {"directory": directory.name},
            "throughput": _fake_section()}


def test_report_says_which_attention_the_decode_steps_ran():
    """The throughput section's setup line names the decode steps' attention: quantkit's split-KV kernel, the grouped
    SDPA, or neither (transformers' attention as it is)."""
    section = _fake_section()
    lines = {}
    for attention, decode in (("quantkit_grouped_sdpa", "split"), ("quantkit_grouped_sdpa", "sdpa"), ("sdpa", None)):
        section.update(attention=attention, decode_attention=decode)
        lines[attention, decode] = "\n".join(report._throughput_md(section, None))
    assert "split-KV decoding kernel" in lines["quantkit_grouped_sdpa", "split"]
    assert "reading each cached key/value head once" not in lines["quantkit_grouped_sdpa", "split"]
    assert "reading each cached key/value head once" in lines["quantkit_grouped_sdpa", "sdpa"]
    assert "split-KV" not in lines["quantkit_grouped_sdpa", "sdpa"]
    assert "split-KV" not in lines["sdpa", None] and "reading each cached" not in lines["sdpa", None]


def test_reports_are_written_atomically(checkpoints, tmp_path, monkeypatch):
    result = _fake_result(checkpoints[1])
    paths = dict(json_path=tmp_path / "r.json", md_path=tmp_path / "r.md", png_path=tmp_path / "r.png")
    written = report.write(result, **paths)
    assert sorted(p.name for p in written) == ["r.json", "r.md", "r.png"]
    assert json.loads(paths["json_path"].read_text())["weights_digest"] == weights_digest(checkpoints[1])
    assert paths["png_path"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md_path"].read_text()
    assert "![tokens/s by batch size](r.png)" in md and "not meaningful" in md

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "render_markdown", broken)
    before = paths["md_path"].read_text()
    with pytest.raises(RuntimeError):
        report.write(result, md_path=paths["md_path"])
    assert paths["md_path"].read_text() == before  # the old report survives a failed write
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial files left behind


def test_cli_end_to_end_writes_card_ready_results(checkpoints, monkeypatch):
    from quantkit.cli import main
    from quantkit.eval.run_settings import MEASURING
    from quantkit.hub.artifact import check_artifact
    from quantkit.hub.card import render_card

    for name in MEASURING:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QUANTKIT_SPLITS_ROUND", "nearest")  # its default: the run is the same, the command says it

    base_dir, quant = checkpoints
    args = ["eval", str(quant), "--baseline", str(base_dir), "--ctx", str(CTX), "--max-windows", "2", "--device", "cpu",
            "--throughput", "--batch", "1,2", "--prompt-len", "8", "--gen-len", "2", "--warmup", "0", "--repeats", "1",
            "--decode-attention", "sdpa"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "top-1 agreement" in out.output and "not meaningful" in out.output
    data = json.loads((quant / EVAL_JSON).read_text())
    assert data["weights_digest"] == weights_digest(quant)
    assert data["command"].startswith("QUANTKIT_SPLITS_ROUND=nearest quantkit eval ") and "--throughput" in data["command"]
    p = data["perplexity"]
    assert {"text", "ctx", "windows", "quantized", "baseline", "kl_divergence", "top1_agreement"} <= set(p)
    assert {"ppl", "stderr"} <= set(p["quantized"]) and math.isfinite(p["quantized"]["stderr"])
    assert [r["batch"] for r in data["throughput"]["rows"]] == [1, 2]
    assert data["throughput"]["settings"]["decode_attention"] == data["throughput"]["decode_attention"] == "sdpa"
    assert (quant / "quantkit_eval.md").is_file() and (quant / "quantkit_eval.png").is_file()
    card = str(render_card(check_artifact(quant), repo_id="alice/tiny-q4"))
    assert "KL divergence from the base model" in card and "| 2 |" in card and "quantkit_eval.png" in card


def test_cli_llama_cpp_backend_agrees_with_reference(checkpoints):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    _, quant = checkpoints
    ref = validate.evaluate_perplexity(quant, ctx=CTX, max_windows=3, device="cpu", backend="reference", progress=False)
    cpp = validate.evaluate_perplexity(quant, ctx=CTX, max_windows=3, device="cpu", backend="llama.cpp", progress=False)
    assert cpp["backend"] == "llama.cpp"
    assert abs(cpp["quantized"]["ppl"] / ref["quantized"]["ppl"] - 1) < 0.005, (cpp["quantized"], ref["quantized"])


def test_cli_errors_are_one_line(checkpoints, tmp_path):
    from quantkit.cli import main

    runner = CliRunner()
    out = runner.invoke(main, ["eval", "--random-weights", "tiny-llama"])
    assert out.exit_code == 1 and "add --throughput" in out.output
    out = runner.invoke(main, ["eval", str(checkpoints[1]), "--backend", "kernel", "--device", "cpu", "--no-ppl", "--throughput"])
    assert out.exit_code == 1 and "use --backend reference" in out.output
    out = runner.invoke(main, ["eval", str(checkpoints[1]), "--throughput", "--backend", "llama.cpp", "--device", "cpu"])
    assert out.exit_code == 1 and "llama-bench" in out.output
    out = runner.invoke(main, ["eval", str(tmp_path), "--device", "cpu"])
    assert out.exit_code == 1 and "error:" in out.output and "Traceback" not in out.output
    out = runner.invoke(main, ["eval", str(checkpoints[1]), "--throughput", "--decode-attention", "flash"])
    assert out.exit_code == 2 and "'flash' is not one of 'split', 'sdpa'" in out.output


def test_compiled_decode_traces_with_quantized_linears_opaque(monkeypatch):
    """--compile: the decode step of both models goes through torch.compile (here its eager backend: tracing only,
    no code generation) and the compiled step is what runs; in the quantized model's graph every quantized linear is
    one quantkit_eval::quantized_linear op, in the baseline's there is none. The checks still hold and the modules
    come back."""
    from quantkit.eval import random_weights
    from quantkit.reference import QuantLinear

    model, base, _ = random_weights.build("tiny-llama", group_size=32, dtype=torch.float32, device="cpu",
                                          module_factory=QuantLinear, progress=False)
    op = (torch.ops.quantkit_eval.quantized_linear, torch.ops.quantkit_eval.quantized_linear.default)
    compiled, wrapped, ops, runs = [], {}, {}, {}

    def recording(name):
        def backend(gm, example_inputs):
            ops[name] = ops.get(name, 0) + sum(n.op == "call_function" and n.target in op for n in gm.graph.nodes)

            def run(*args):
                runs[name] = runs.get(name, 0) + 1
                return gm.forward(*args)
            return run
        return backend

    original = throughput._compiled

    def spy(m, backend):
        name = "quantized" if m is model else "baseline" if m is base else "other"
        compiled.append((name, backend))
        wrapped[name] = sum(isinstance(x, throughput._Opaque) for x in m.modules())
        return original(m, recording(name))

    monkeypatch.setattr(throughput, "_compiled", spy)
    settings = throughput.Settings(batches=(2,), prompt_len=8, gen_len=2, warmup=0, repeats=1, compile=True,
                                   compile_backend="eager")
    section = throughput.measure(model, base, settings=settings, same_weights=True, progress=False)
    assert section["compiled_decode"] is True
    assert sorted(compiled) == [("baseline", "eager"), ("quantized", "eager")]
    quantized = sum(isinstance(m, QuantLinear) for m in model.modules())
    assert wrapped == {"quantized": quantized, "baseline": 0} and quantized > 0
    assert runs.get("quantized", 0) >= settings.gen_len and runs.get("baseline", 0) >= settings.gen_len, runs
    assert ops == {"quantized": quantized, "baseline": 0}, ops
    assert all(c["passed"] for c in section["checks"] if "passed" in c), section["checks"]
    assert isinstance(model.model.layers[0].mlp.down_proj, QuantLinear)
    assert not throughput._OPAQUE


def test_compiled_decode_through_inductor_with_combo_kernels_on_the_cpu(monkeypatch):
    """The default compile path for real (inductor, combo kernels and programmatic launches asked for, as on a GPU;
    code generated for the CPU here): both models' steps compile, run, agree with a plain forward pass, and the
    record says combo kernels and inductor's programmatic launches were on."""
    from quantkit.eval import fuse, random_weights
    from quantkit.reference import QuantLinear

    from quantkit.kernels import ops

    monkeypatch.setattr(throughput, "COMBO_KERNELS", True)  # the defaults (whatever this environment says)
    monkeypatch.setattr(fuse, "INDUCTOR_PDL", True)
    monkeypatch.setattr(ops, "GLU_WS", False)  # not the default: the record says what ran
    model, base, _ = random_weights.build("tiny-llama", group_size=32, dtype=torch.float32, device="cpu",
                                          module_factory=QuantLinear, progress=False)
    settings = throughput.Settings(batches=(2,), prompt_len=8, gen_len=2, warmup=0, repeats=1, compile=True)
    assert settings.compile_backend == "inductor"
    section = throughput.measure(model, base, settings=settings, same_weights=True, progress=False)
    assert section["compiled_decode"] is True and section["combo_kernels"] is True
    assert section["glu_ws"] is False and section["glu_epilogue"] is ops.GLU_EPILOGUE
    assert section["inductor_pdl"] is True  # (QUANTKIT_INDUCTOR_PDL; this torch's inductor has triton.enable_pdl)
    steps = [c for c in section["checks"] if "logits_rel_error" in c]
    assert len(steps) == 2 and all(c["passed"] for c in steps), section["checks"]


def _x_from_image(image: torch.Tensor) -> torch.Tensor:
    """x [M, K] back from its image [K / 64, M, 64] (kernels.ops.x_image): what the stand-ins of the kernel read."""
    from quantkit.kernels import ops

    chunks, m, _ = image.shape
    k = 64 * chunks
    order = ops.x_image(torch.arange(m * k, dtype=torch.float64).reshape(m, k)).flatten().long()
    x = torch.empty(m * k, dtype=image.dtype)
    x[order] = image.flatten()
    return x.view(m, k)


def test_compiled_step_hands_the_ws_kernel_its_image_of_x(monkeypatch):
    """Inside a compiled step, a quantized linear whose layer runs the warp-specialized kernel at the step's rows (on
    a GPU: kernels.ops.x_image_ready, wgmma_ws; stood in for here) gets the kernel's image of x from torch ops
    (kernels.ops.x_image, for inductor to fuse into the kernel that makes x) through its own op; other row counts,
    and every eager call, go through the plain op. The stand-in for the kernel reads the image back into x."""
    from eval_modules import SiluDown

    from quantkit.kernels import W4A16Linear, ops, prepare, reference_linear, testing

    packed = prepare(testing.random_qlinear(32, 256, group_size=64, sym=False, act_order=False,
                                            dtype=torch.bfloat16, seed=3), device="cpu", layouts=("mma",))
    spec = ops.x_image(torch.arange(6 * 256, dtype=torch.float64).reshape(6, 256)).flatten().long()
    images = []

    def kernel_stand_in(image, layer, bias, glu=False):
        images.append(image.shape[1])
        assert not glu
        return reference_linear(_x_from_image(image), layer, bias)

    monkeypatch.setattr(ops, "x_image_ready", lambda p: True)
    monkeypatch.setattr(ops, "sm_count", lambda d: 132)
    monkeypatch.setattr(ops, "wgmma_ws", lambda m, n, k, sms: m > 4)
    monkeypatch.setattr(ops, "w4a16_linear_image", kernel_stand_in)

    model = SiluDown(packed)
    assert sorted(spec.tolist()) == list(range(6 * 256)) and spec[:8].tolist() != list(range(8))  # a permutation
    with throughput.opaque_quantized_linears(model):
        compiled = torch.compile(model, dynamic=True, backend="eager")
        for rows in (8, 2, 6):
            x = torch.randn(rows, 1, 256, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
            want = model(x)
            assert not images  # eager: the plain op
            assert torch.equal(compiled(x), want)
            assert images == ([rows] if rows > 4 else []), (rows, images)
            images.clear()
    torch._dynamo.reset()
    assert isinstance(model.down, W4A16Linear) and not throughput._OPAQUE


@pytest.mark.parametrize("glu_ws", [False, True])
def test_compiled_step_hands_a_gated_pair_its_image_of_x(monkeypatch, glu_ws):
    """A gated pair at rows where its layer runs the warp-specialized kernel (stood in for here, as above): the image
    op applies the SiLU and multiply itself where kernels.ops.GLU_WS holds (asked with glu=True, its output half the
    rows), else gives the pair's interleaved sums and torch's ops apply them; both the eager module's output."""
    from quantkit.kernels import W4A16Linear, ops, prepare, reference_linear, testing

    gate, up = (prepare(testing.random_qlinear(32, 256, group_size=64, sym=False, act_order=False,
                                               dtype=torch.bfloat16, seed=40 + i), device="cpu", layouts=("mma",))
                for i in range(2))
    pair = W4A16Linear.concat_glu(W4A16Linear(gate), W4A16Linear(up))
    asked = []

    def kernel_stand_in(image, layer, bias, glu=False):
        asked.append(glu)
        y = reference_linear(_x_from_image(image), layer, bias)
        return ops.glu_interleaved(y) if glu else y

    monkeypatch.setattr(ops, "GLU_WS", glu_ws)
    monkeypatch.setattr(ops, "x_image_ready", lambda p: True)
    monkeypatch.setattr(ops, "glu_ready", lambda p: True)
    monkeypatch.setattr(ops, "has_wgmma", lambda d: True)
    monkeypatch.setattr(ops, "sm_count", lambda d: 132)
    monkeypatch.setattr(ops, "wgmma_ws", lambda m, n, k, sms: m > 4)
    monkeypatch.setattr(ops, "w4a16_linear_image", kernel_stand_in)
    module = torch.nn.Sequential(pair)
    with throughput.opaque_quantized_linears(module), torch.inference_mode():
        compiled = torch.compile(module, dynamic=False, backend="eager")
        x = torch.randn(8, 1, 256, generator=torch.Generator().manual_seed(8)).to(torch.bfloat16)
        assert torch.equal(compiled(x), module(x))
    torch._dynamo.reset()
    assert asked == [glu_ws] and not throughput._OPAQUE


def test_compiled_step_hands_a_rope_order_qkv_its_image_of_x_and_puts_its_rows_back(monkeypatch):
    """A q/k/v layer in rope order (W4A16Linear.concat_rope, fuse.ROPE_IN_QKV) at rows where its layer runs the
    warp-specialized kernel (stood in for, as above) gets its image of x and gives q, k and v in their own order, as
    through the plain op at other rows and the eager module: the image op's rows are put back too."""
    from quantkit.kernels import W4A16Linear, ops, prepare, reference_linear, testing

    heads, kv, d, k = 4, 2, 32, 256
    parts = [W4A16Linear(prepare(testing.random_qlinear(n * d, k, group_size=64, sym=True, act_order=False,
                                                        dtype=torch.bfloat16, seed=50 + i), device="cpu",
                                 layouts=("mma",))) for i, n in enumerate((heads, kv, kv))]
    images = []

    def kernel_stand_in(image, layer, bias, glu=False):
        images.append(image.shape[1])
        return reference_linear(_x_from_image(image), layer, bias)

    monkeypatch.setattr(ops, "x_image_ready", lambda p: True)
    monkeypatch.setattr(ops, "sm_count", lambda d: 132)
    monkeypatch.setattr(ops, "wgmma_ws", lambda m, n, k, sms: m > 4)
    monkeypatch.setattr(ops, "w4a16_linear_image", kernel_stand_in)
    module = torch.nn.Sequential(W4A16Linear.concat_rope(*parts, heads, kv, d))
    with throughput.opaque_quantized_linears(module), torch.inference_mode():
        compiled = torch.compile(module, dynamic=False, backend="eager")
        for rows in (8, 2):
            x = torch.randn(rows, 1, k, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
            want = torch.cat([p(x) for p in parts], -1)
            assert torch.equal(module(x), want)
            assert torch.equal(compiled(x), want), rows
            assert images == ([rows] if rows > 4 else []), (rows, images)
            images.clear()
    torch._dynamo.reset()
    assert not throughput._OPAQUE


def test_compiled_ops_of_two_models_of_one_input_width_keep_their_own_output_widths(monkeypatch, tmp_path):
    """Two models, each one quantized linear of 256 inputs (64 and then 96 outputs, of one seed), compiled by inductor
    one after the other with one on-disk cache of compiled graphs: each graph is the one op on the same input, and
    with the op's output width looked up by the layer's number (0 in both models) the second model's came from the
    cache with the first's width and failed its size check. The width is the op's argument, so the second graph is
    its own (two lookups of the cache, two misses) and its output 96 wide."""
    from torch._dynamo.utils import counters
    from torch._inductor import config as inductor_config

    from quantkit.kernels import W4A16Linear, prepare, reference_linear, testing

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    counters.clear()
    for n in (64, 96):
        packed = prepare(testing.random_qlinear(n, 256, group_size=64, sym=False, act_order=False,
                                                dtype=torch.bfloat16, seed=7), device="cpu", layouts=("mma",))
        model = torch.nn.Sequential(W4A16Linear(packed))
        with throughput.opaque_quantized_linears(model), torch.inference_mode(), \
                inductor_config.patch(fx_graph_cache=True):
            assert list(throughput._OPAQUE) == [0]
            y = torch.compile(model, dynamic=False)(x)
        torch._dynamo.reset()
        assert torch.equal(y, reference_linear(x, packed)), n
    assert counters["inductor"]["fxgraph_cache_miss"] == 2, dict(counters["inductor"])


def _decoded(runner: throughput.Runner) -> torch.Tensor:
    """The last position's logits of each of the runner's decode steps after a reset and a prefill, stacked."""
    runner.reset()
    runner.prefill()
    out = []
    for _ in range(runner.s.gen_len):
        runner.decode()
        out.append(runner.decode_logits()[:, -1].clone())
    return torch.stack(out)


def test_decode_attention_reads_each_kv_head_once(monkeypatch):
    """The throughput runs' attention (quantkit.eval.attention): a grouped-query decode step gives transformers'
    SDPA logits without repeating the cache per query head, traced through torch.compile too (where transformers
    itself repeats it: the count below is what makes this test able to fail)."""
    import transformers.integrations.sdpa_attention as sdpa
    from quantkit.eval import attention, random_weights
    from quantkit.reference import QuantLinear

    repeats, in_decode = [], []  # per repeat_kv call (at run time, or at trace time when compiled): in a decode step?
    real_repeat, real_decode = sdpa.repeat_kv, throughput.Runner._decode

    def decode_step(runner):
        in_decode.append(True)
        try:
            real_decode(runner)
        finally:
            in_decode.pop()

    monkeypatch.setattr(sdpa, "repeat_kv", lambda h, n: repeats.append(bool(in_decode)) or real_repeat(h, n))
    monkeypatch.setattr(throughput.Runner, "_decode", decode_step)
    model, _, _ = random_weights.build("tiny-llama", group_size=32, dtype=torch.float32, device="cpu",
                                       module_factory=QuantLinear, progress=False)
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    settings = throughput.Settings(batches=(2,), prompt_len=8, gen_len=3)
    prompt = torch.randint(0, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))

    def decode_logits(decoder=None):
        runner = throughput.Runner(model, batch=2, settings=settings, prompt=prompt, decode_model=decoder)
        runner.prepare()
        return _decoded(runner)

    with torch.inference_mode():
        want = decode_logits()
        torch._dynamo.reset()
        repeats.clear()
        decode_logits(throughput._compiled(model, "eager"))
        assert True in repeats, "transformers' SDPA no longer repeats the cache in a compiled decode step"
        with attention.grouped_decode_attention(model):
            assert model.config._attn_implementation == attention.NAME
            torch._dynamo.reset()
            repeats.clear()
            got = decode_logits(throughput._compiled(model, "eager"))
            assert repeats and True not in repeats  # the prefill still repeats (transformers' SDPA), decode steps do not
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
            eager = decode_logits()
            assert torch.allclose(eager, want, rtol=1e-4, atol=1e-5)
        assert model.config._attn_implementation == "sdpa"
    torch._dynamo.reset()


def test_cache_layers_write_at_the_runners_position(monkeypatch):
    """throughput.SHARED_CACHE_POSITION: the runner's cache layers write each step's keys and values at its position
    (0 for the prompt), advancing no counter of their own, and hold what transformers' own layers hold, with the same
    logits, eagerly and compiled by inductor; the run records it."""
    from transformers.cache_utils import StaticLayer

    from quantkit.eval import random_weights
    from quantkit.reference import QuantLinear

    model, base, _ = random_weights.build("tiny-llama", group_size=32, dtype=torch.float32, device="cpu",
                                          module_factory=QuantLinear, progress=False)
    settings = throughput.Settings(batches=(2,), prompt_len=8, gen_len=3)
    prompt = torch.randint(0, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))

    def run(shared: bool, decoder=None):
        monkeypatch.setattr(throughput, "SHARED_CACHE_POSITION", shared)
        runner = throughput.Runner(model, batch=2, settings=settings, prompt=prompt, decode_model=decoder)
        assert runner.shared_cache_layers == (model.config.num_hidden_layers if shared else 0)
        runner.prepare()
        _decoded(runner)
        logits = _decoded(runner)  # a second repeat starts from the reset cache again
        layers = runner.cache.layers
        assert all((type(layer) is StaticLayer) != shared for layer in layers)
        counted = [int(layer.cumulative_length) for layer in layers]
        assert counted == [0 if shared else settings.prompt_len + settings.gen_len] * len(layers)
        return logits, [(layer.keys.clone(), layer.values.clone()) for layer in layers]

    with torch.inference_mode():
        want, cached = run(False)
        written = settings.prompt_len + settings.gen_len
        assert all(k[:, :, :written].abs().sum(-1).gt(0).all() and not k[:, :, written:].any() for k, _ in cached)
        for decoder in (None, throughput._compiled(model, "inductor")):
            got, got_cached = run(True, decoder)
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
            for (k, v), (k2, v2) in zip(cached, got_cached):
                assert torch.allclose(k, k2, rtol=1e-4, atol=1e-5) and torch.allclose(v, v2, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
    monkeypatch.setattr(throughput, "SHARED_CACHE_POSITION", True)
    assert throughput.measure(model, base, settings=TINY_SETTINGS, same_weights=True,
                              progress=False)["shared_cache_position"] is True
    monkeypatch.setattr(throughput, "SHARED_CACHE_POSITION", False)
    assert throughput.measure(model, base, settings=TINY_SETTINGS, same_weights=True,
                              progress=False)["shared_cache_position"] is False


def test_fused_projections_compute_the_same_function():
    """quantkit.eval.fuse: q/k/v and gate/up as one linear each, in the quantized (reference modules) and the bf16
    model alike, give the same logits; a projection handed a new input recomputes; the throughput run records it."""
    from quantkit.eval import fuse, random_weights
    from quantkit.reference import QuantLinear

    model, base, _ = random_weights.build("tiny-llama", group_size=32, dtype=torch.float32, device="cpu",
                                          module_factory=QuantLinear, progress=False)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = [m(ids).logits for m in (model, base)]
        attn = base.model.layers[0].self_attn
        x, x2 = torch.randn(2, 3, attn.q_proj.in_features), torch.randn(2, 3, attn.q_proj.in_features)
        k_want = attn.k_proj(x2)
        for m in (model, base):
            assert fuse.fuse_projections(m) == {"qkv": 2, "gate_up": 2, "glu": 0, "model_type": "llama"}
        assert isinstance(base.model.layers[0].mlp, fuse.FusedGatedMLP)
        assert isinstance(model.model.layers[1].self_attn.q_proj.shared.fused, QuantLinear)
        for m, w in zip((model, base), want):
            assert torch.equal(m(ids).logits, w)
        attn.q_proj(x)
        assert torch.equal(attn.k_proj(x2), k_want)  # not x's k: recomputed for x2
    section = throughput.measure(model, base, settings=TINY_SETTINGS, same_weights=True, progress=False)
    assert section["fused_projections"]["baseline"]["qkv"] == 0  # already fused above: nothing left to fuse
    assert all(c["passed"] for c in section["checks"] if "passed" in c)


def _w4a16_tiny_llama():
    """tiny-llama in bf16 with its quantized linears as W4A16Linear (on the CPU: the reference path behind the
    kernel's signature), and its bf16 twin."""
    from quantkit.eval import random_weights
    from quantkit.kernels import W4A16Linear, prepare

    return random_weights.build("tiny-llama", group_size=32, dtype=torch.bfloat16, device="cpu", progress=False,
                                module_factory=lambda ql: W4A16Linear(prepare(ql, device="cpu"), ql.bias,
                                                                      backend="auto"))


@pytest.mark.parametrize("glu", [True, False])
def test_gated_pair_in_the_4bit_model_only(monkeypatch, glu):
    """quantkit.eval.fuse: the 4-bit model's gate and up become one gated pair (W4A16Linear.concat_glu) whose down is
    a programmatic launch (GLU_PDL), the bf16 model's stay a plain concatenation; the logits agree with the unfused
    model; the record counts them. An MLP whose activation is not SiLU is concatenated as before. With the attention
    kernels' programmatic launches (decode_attention.PDL, asked for in the second case) the 4-bit o_proj is one too."""
    from quantkit.eval import decode_attention, fuse

    monkeypatch.setattr(fuse, "ROPE_IN_QKV", True)
    monkeypatch.setattr(decode_attention, "PDL", not glu)
    monkeypatch.setattr(fuse, "INDUCTOR_PDL", False)  # the rest of the programmatic launches: the next test
    if not glu:
        monkeypatch.setattr(fuse, "_is_silu", lambda act: False)
    model, base, _ = _w4a16_tiny_llama()
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want = [m(ids).logits for m in (model, base)]
        info = [fuse.fuse_projections(m) for m in (model, base)]
        got = [m(ids).logits for m in (model, base)]
    pairs = 2 if glu else 0
    assert info[0] == {"qkv": 2, "gate_up": 2, "glu": pairs, "model_type": "llama", "rope_qkv": 2,
                       **({"glu_pdl": 2} if glu else {"o_proj_pdl": 2})}  # q/k/v in rope order (fuse.ROPE_IN_QKV)
    assert info[1] == {"qkv": 2, "gate_up": 2, "glu": 0, "model_type": "llama"}  # nn.Linear: launched by cuBLAS
    mlp = model.model.layers[0].mlp
    assert getattr(mlp.gate_up, "glu", False) is glu and mlp.down_proj.pdl is (True if glu else None)
    assert model.model.layers[1].self_attn.o_proj.pdl is (None if glu else True)
    assert mlp.gate_up.out_features == (model.config.intermediate_size if glu else 2 * model.config.intermediate_size)
    for g, w in zip(got, want):  # the pair's sums come from one product over both halves: bf16 roundings apart
        assert float((g.float() - w.float()).norm() / w.float().norm()) < 1e-2


def test_programmatic_launches_through_the_step(monkeypatch):
    """fuse.INDUCTOR_PDL: every 4-bit linear of a fused block is a programmatic dependent launch (q/k/v and gate/up
    after inductor's normalizations, down after gate/up; o_proj too with the attention's, decode_attention.PDL),
    none of the bf16 model's; the compiled step asks inductor for its programmatic launches, in both models, and only
    then (throughput._compiled)."""
    from quantkit.eval import decode_attention, fuse

    monkeypatch.setattr(fuse, "INDUCTOR_PDL", True)
    monkeypatch.setattr(fuse, "ROPE_IN_QKV", True)
    monkeypatch.setattr(decode_attention, "PDL", True)
    model, base, _ = _w4a16_tiny_llama()
    info = [fuse.fuse_projections(m) for m in (model, base)]
    assert info[0] == {"qkv": 2, "gate_up": 2, "glu": 2, "glu_pdl": 2, "o_proj_pdl": 2, "norm_pdl": 4,
                       "model_type": "llama", "rope_qkv": 2}
    assert info[1] == {"qkv": 2, "gate_up": 2, "glu": 0, "model_type": "llama"}
    for block in model.model.layers:
        attn, mlp = block.self_attn, block.mlp
        assert [attn.q_proj.shared.fused.pdl, attn.o_proj.pdl, mlp.gate_up.pdl, mlp.down_proj.pdl] == [True] * 4
    asked = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: asked.append(kw.get("options")) or m)
    for pdl in (True, False):
        monkeypatch.setattr(fuse, "INDUCTOR_PDL", pdl)
        throughput._compiled(model, "inductor", combo_kernels=False)
        throughput._compiled(model, "eager", combo_kernels=False)
        assert throughput.inductor_pdl() is pdl
    assert asked == [{"triton.enable_pdl": True}, None, None, None]


def test_compiled_step_routes_a_gated_pair(monkeypatch):
    """Inside a compiled step a gated pair goes through its op whole (the kernel's epilogue applies the SiLU and
    multiply) at the rows where its kernel can (kernels.ops.glu_ready and glu_at; stood in for here), and as its op's
    interleaved sums plus torch's SiLU and multiply (glu_interleaved, for inductor to fuse) elsewhere; both give the
    eager module's output."""
    from quantkit.eval import fuse
    from quantkit.kernels import ops as kernel_ops

    model, _, _ = _w4a16_tiny_llama()
    fuse.fuse_projections(model)
    mlp = model.model.layers[0].mlp
    pair = mlp.gate_up
    monkeypatch.setattr(kernel_ops, "glu_ready", lambda packed: True)
    monkeypatch.setattr(kernel_ops, "has_wgmma", lambda device: False)
    monkeypatch.setattr(kernel_ops, "sm_count", lambda device: 132)
    monkeypatch.setattr(kernel_ops, "glu_at", lambda m, n, k, wgmma, sms: m > 4 and n == pair.packed.out_features)
    seen = []

    def backend(gm, example_inputs):  # the rows flag of each call of the pair's op in the traced graph
        seen.append([n.args[2] for n in gm.graph.nodes if n.op == "call_function"
                     and n.target in (torch.ops.quantkit_eval.quantized_linear,
                                      torch.ops.quantkit_eval.quantized_linear.default)
                     and throughput._OPAQUE[n.args[1]] is pair])
        return gm.forward

    with throughput.opaque_quantized_linears(mlp), torch.inference_mode():
        compiled = torch.compile(mlp, dynamic=False, backend=backend)
        for rows in (8, 2):
            x = torch.randn(rows, 1, pair.in_features, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
            assert torch.equal(compiled(x), mlp(x))
    torch._dynamo.reset()
    assert seen == [[False], [True]], seen  # 8 rows: the op whole; 2 rows: its sums, then torch's ops
    assert not throughput._OPAQUE


def test_folded_decoder_layers(monkeypatch):
    """quantkit.eval.fuse.fold_layers (in fuse_projections, the 4-bit model only): every block a FoldedDecoderLayer
    whose residual adds and RMSNorms ride in its 4-bit linears (kernels.ops.Fold) at one token a step
    (NORM_FOLD_ROWS): the same logits as the unfolded model a rounding apart, bit for bit at more tokens (the block's
    own order of operations) and with no rows folded, with o_proj's and down's sums of squares handed to gate/up and
    the next block or not (NORM_FOLD_SS); the cached decode step agrees with a plain forward pass; the
    programmatic launches stay; a compiled step traces the four folded linears of each block as the folded ops, and
    inductor compiles it to the same logits; a
    model whose blocks are not all foldable (the bf16 one) is left as it is."""
    from transformers import DynamicCache

    from quantkit.eval import decode_attention, fuse
    from quantkit.kernels import ops

    monkeypatch.setattr(decode_attention, "PDL", True)
    monkeypatch.setattr(fuse, "INDUCTOR_PDL", True)
    plain, base, _ = _w4a16_tiny_llama()
    model, _, _ = _w4a16_tiny_llama()
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    rel = lambda a, b: float((a.float() - b.float()).norm() / b.float().norm())  # noqa: E731
    with torch.inference_mode():
        monkeypatch.setattr(fuse, "NORM_FOLD", False)
        fuse.fuse_projections(plain)
        monkeypatch.setattr(fuse, "NORM_FOLD", True)
        info = [fuse.fuse_projections(m) for m in (model, base)]
        assert info[0]["norm_fold"] == 2 and info[0]["norm_fold_rows"] == fuse.NORM_FOLD_ROWS == 1
        assert info[0]["norm_fold_ss"] is fuse.NORM_FOLD_SS is True  # (unless QUANTKIT_NORM_FOLD_SS=0)
        assert info[0]["norm_fold_ss_down"] is fuse.NORM_FOLD_SS_DOWN is True
        assert "norm_fold" not in info[1] and fuse.fold_layers(base) == 0
        assert not any(isinstance(b, fuse.FoldedDecoderLayer) for b in base.model.layers)
        layers = model.model.layers
        assert all(isinstance(b, fuse.FoldedDecoderLayer) for b in layers) and layers[-1].next_norm is None
        assert layers[0].next_norm is layers[1].input_layernorm and fuse.fold_layers(model) == 2
        block = layers[0]
        assert [block.self_attn.q_proj.shared.fused.pdl, block.self_attn.o_proj.inner.pdl, block.mlp.gate_up.pdl,
                block.mlp.down_proj.pdl] == [True] * 4
        assert torch.equal(model(ids).logits, plain(ids).logits)  # 18 rows: not folded
        carried = []  # what the first block hands the second: its stream and x, and the stream's sums of squares
        hook = layers[1].register_forward_pre_hook(lambda mod, args: carried.append(args[0]))
        one = model(ids[:1, :1]).logits
        (hx, ss), = carried
        assert hx.shape == (2, 1, 1, model.config.hidden_size)
        assert torch.allclose(ss, ops.sum_squares(hx[0]), rtol=1e-6, atol=0)
        assert 0 < rel(one, plain(ids[:1, :1]).logits) < 2e-2
        monkeypatch.setattr(fuse, "NORM_FOLD_SS_DOWN", False)  # o_proj's sums only: the same logits, none handed on
        assert torch.equal(model(ids[:1, :1]).logits, one)
        hook.remove()
        assert len(carried) == 2 and carried[1][1] is None
        monkeypatch.setattr(fuse, "NORM_FOLD_SS_DOWN", True)
        monkeypatch.setattr(fuse, "NORM_FOLD_SS", False)  # o_proj's sums of squares for gate/up: the same logits
        assert torch.equal(model(ids[:1, :1]).logits, one)
        monkeypatch.setattr(fuse, "NORM_FOLD_SS", True)
        cache = DynamicCache(config=model.config)
        model(ids[:1, :8], **throughput._forward_kwargs(model, cache), use_cache=True)
        step = model(ids[:1, 8:], **throughput._forward_kwargs(model, cache), use_cache=True).logits[:, -1]
        assert rel(step, model(ids[:1]).logits[:, -1]) < 2e-2
        monkeypatch.setattr(fuse, "NORM_FOLD_ROWS", 0)
        assert torch.equal(model(ids[:1, :1]).logits, plain(ids[:1, :1]).logits)
        monkeypatch.setattr(fuse, "NORM_FOLD_ROWS", 1)
    seen = []

    def backend(gm, example_inputs):
        seen.append(sum(n.op == "call_function" and "quantized_linear_folded" in str(n.target) for n in gm.graph.nodes))
        return gm.forward

    with throughput.opaque_quantized_linears(model), torch.inference_mode():
        compiled = torch.compile(model, dynamic=False, backend=backend)
        assert torch.equal(compiled(ids[:1, :1]).logits, one)
    torch._dynamo.reset()
    assert seen == [8], seen  # q/k/v, o_proj, gate/up and down of each of the two blocks
    with throughput.opaque_quantized_linears(model), torch.inference_mode():  # inductor lowers them (o_proj fills ss)
        assert torch.equal(torch.compile(model, dynamic=False)(ids[:1, :1]).logits, one)
    torch._dynamo.reset()
    assert not throughput._OPAQUE


def test_split_kv_decode_plan_and_routing():
    """The split plan makes at least two programs a multiprocessor (132 here) of whole blocks; supports() takes one
    query token, a power-of-two head size and a shared boolean mask only, runs_for() grouped-query models on a GPU;
    the throughput runs ask for it (Settings.decode_attention, set inside grouped_decode_attention only) and record
    SDPA where it does not run; anything but "split" or "sdpa" is refused."""
    from transformers import LlamaConfig

    from quantkit.eval import attention, decode_attention

    assert decode_attention.BLOCK_S == 32 and decode_attention.PROGRAMS_PER_SM == 2
    assert decode_attention.plan(1, 8, 640) == (20, 32)  # 8 (sequence, KV head) pairs: every block its own range
    assert decode_attention.plan(32, 8, 640) == (1, 640)  # 256 (sequence, KV head) pairs: one each, one kernel
    assert decode_attention.plan(32, 8, 640, rounding="up") == (2, 320)  # at least 264 programs: two ranges each
    assert decode_attention.plan(22, 8, 640) == (2, 320) and decode_attention.plan(23, 8, 640) == (1, 640)
    assert decode_attention.plan(64, 8, 640) == (1, 640)
    assert decode_attention.plan(8, 8, 640) == (4, 160)  # 4.1 ranges a pair: 4 (5 rounded up)
    assert decode_attention.plan(8, 8, 640, rounding="up") == (5, 128)
    assert decode_attention.plan(2, 8, 200) == (7, 32)
    assert decode_attention.plan(2, 8, 200, per_sm=1, block=64) == (4, 64)
    with pytest.raises(ValueError, match="must be up or nearest"):
        decode_attention.plan(2, 8, 200, rounding="down")
    # the ranges end at the sequence's last attending position where they are more than one block
    def bounded(*shape):
        return decode_attention.ends_at_last_kept(decode_attention.plan(*shape)[1])

    assert not bounded(1, 8, 640)  # one block a range: the scan would cost more
    assert bounded(8, 8, 640) and bounded(32, 8, 640)
    assert bounded(1, 8, 4096)  # a long static cache: 4 blocks a range
    assert decode_attention.settings()["MASK_BOUND"] is True
    assert decode_attention.settings()["SPLITS_ROUND"] == "nearest"
    assert decode_attention.settings()["FUSED_COMBINE"] is decode_attention.FUSED_COMBINE is True
    q, k = torch.zeros(1, 4, 1, 32, dtype=torch.bfloat16), torch.zeros(1, 2, 10, 32, dtype=torch.bfloat16)
    mask = torch.ones(1, 1, 1, 10, dtype=torch.bool)
    ok = decode_attention.available()
    assert decode_attention.supports(q, k, mask) is ok
    assert not decode_attention.supports(q, k, mask.float()) and not decode_attention.supports(q, k, None)
    assert not decode_attention.supports(q.expand(1, 4, 2, 32), k, mask)  # two query tokens: not a decode step
    assert not decode_attention.supports(q.float(), k, mask)
    assert not decode_attention.supports(torch.zeros_like(q[..., :24]), k[..., :24], mask)  # head size 24
    gqa = LlamaConfig(hidden_size=256, num_attention_heads=8, num_key_value_heads=2)
    mha = LlamaConfig(hidden_size=256, num_attention_heads=8, num_key_value_heads=8)
    cuda = torch.device("cuda")
    assert decode_attention.runs_for(gqa, cuda, torch.bfloat16) is ok
    assert not decode_attention.runs_for(gqa, torch.device("cpu"), torch.bfloat16)
    assert not decode_attention.runs_for(gqa, cuda, torch.float32)
    assert not decode_attention.runs_for(mha, cuda, torch.bfloat16)  # no grouping: transformers' SDPA
    assert not decode_attention.runs_for(LlamaConfig(hidden_size=192, num_attention_heads=8, num_key_value_heads=2),
                                         cuda, torch.bfloat16)  # head size 24
    assert throughput.Settings().decode_attention == "split" and attention.DECODE_KERNEL == "sdpa"
    with attention.grouped_decode_attention(decode_kernel="split"):
        assert attention.DECODE_KERNEL == "split"
    assert attention.DECODE_KERNEL == "sdpa"
    with pytest.raises(InputError, match="--decode-attention must be one of split, sdpa"):
        throughput.Settings(decode_attention="flash").validate()
    with pytest.raises(ValueError, match="decode_kernel"):
        with attention.grouped_decode_attention(decode_kernel="flash"):
            pass


@pytest.mark.parametrize("fused_combine", [True, False])
def test_split_kv_decode_in_the_triton_interpreter(fused_combine):
    """The split kernel's arithmetic on the CPU through Triton's interpreter (where Triton is installed; the GPU
    tests run it compiled): float16, since the interpreter's dot mishandles bfloat16; the ranges combined by the last
    to finish (decode_attention.FUSED_COMBINE: the interpreter runs the programs one after another) and by the
    combining kernel."""
    pytest.importorskip("triton")
    code = ("import torch, split_kv_check; "
            f"split_kv_check.check_split_kv_decode('cpu', torch.float16, fused_combine={fused_combine})")
    _in_triton_interpreter(code)


def test_rope_in_attention_in_the_triton_interpreter():
    """decode_attention.rope_split_kv_decode (a decode step's rotary embedding and cache write in the split kernel's
    launch) on the CPU through Triton's interpreter, float16: against torch's rotary embedding and cache write with
    split_kv_decode after them, called and compiled; and attention.ROPE_IN_ATTENTION's decode steps of a tiny Llama,
    eager and compiled, against transformers' own (tests/split_kv_check.py). The interpreter runs the programs one
    after another, so the ranges reading the step's position before the first range stores it are the GPU tests'."""
    pytest.importorskip("triton")
    code = ("import torch, split_kv_check; split_kv_check.check_rope_split_kv_decode('cpu', torch.float16); "
            "split_kv_check.check_rope_in_attention_steps('cpu', torch.float16)")
    _in_triton_interpreter(code)


def test_rope_in_qkv_in_the_triton_interpreter():
    """fuse.ROPE_IN_QKV on the CPU (tests/split_kv_check.py, float16): a tiny Llama of 4-bit layers fused in rope order
    decodes through rope_qkv (the reference product, then ops.rope_rows) and split_kv_decode in Triton's interpreter,
    eager and compiled, with the logits and caches of the same model fused in plain order; its prefill too."""
    pytest.importorskip("triton")
    code = "import torch, split_kv_check; split_kv_check.check_rope_in_qkv_steps('cpu', torch.float16)"
    _in_triton_interpreter(code)


def test_rope_in_attention_is_off_by_default_and_leaves_other_steps_to_transformers(monkeypatch):
    """attention.ROPE_IN_ATTENTION: off unless QUANTKIT_ROPE_IN_ATTENTION=1; on, grouped_decode_attention with the
    split kernel swaps the forwards of a Llama's attention blocks for the time of the block (not with SDPA; the
    baseline's too, whose config the quantized model shares), and where the kernels cannot run (a CPU without Triton's
    interpreter) the steps are transformers' own, the same logits; the throughput run records it off there."""
    from quantkit.eval import attention, random_weights
    from quantkit.reference import QuantLinear

    assert attention.ROPE_IN_ATTENTION is False
    env = {k: v for k, v in os.environ.items() if k != "QUANTKIT_ROPE_IN_ATTENTION"}
    probe = "import quantkit.eval.attention as a; print(a.ROPE_IN_ATTENTION)"
    for value, want in ((None, "False"), ("0", "False"), ("1", "True")):
        run_env = env if value is None else {**env, "QUANTKIT_ROPE_IN_ATTENTION": value}
        out = subprocess.run([sys.executable, "-c", probe], env=run_env, capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == want, out.stderr[-2000:]
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model, base, _ = random_weights.build("tiny-llama", group_size=32, dtype=torch.float32, device="cpu",
                                          module_factory=QuantLinear, progress=False)
    blocks = [layer.self_attn for layer in base.model.layers]
    assert model.config is base.config  # as in a throughput run: the baseline's blocks are swapped all the same
    prompt = torch.randint(0, base.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(2))
    settings = throughput.Settings(batches=(2,), prompt_len=8, gen_len=3)
    with torch.inference_mode():
        want = _decoded(throughput.Runner(base, batch=2, settings=settings, prompt=prompt))
        monkeypatch.setattr(attention, "ROPE_IN_ATTENTION", True)
        with attention.grouped_decode_attention(base, decode_kernel="sdpa"):
            assert not any("forward" in vars(b) for b in blocks)
        with attention.grouped_decode_attention(model, base, decode_kernel="split"):
            both = blocks + [layer.self_attn for layer in model.model.layers]
            assert all("forward" in vars(b) for b in both) and not attention.rope_in_attention_of(base)
            got = _decoded(throughput.Runner(base, batch=2, settings=settings, prompt=prompt))
        assert not any("forward" in vars(b) for b in both)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    assert throughput.measure(model, base, settings=TINY_SETTINGS, same_weights=True,
                              progress=False)["rope_in_attention"] is False


def test_split_kv_fused_combine_launches_one_kernel_with_the_counters(monkeypatch):
    """decode_attention.FUSED_COMBINE, read at every call: with ranges, one launch (the ranges' kernel, FUSED, given
    the device's counters, its tile of ranges a step bounded) instead of two; one range a pair: one launch either way,
    not FUSED; off: the combining kernel after the ranges' kernel."""
    pytest.importorskip("triton")
    from quantkit.eval import decode_attention

    launches = []

    class Kernel:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kw: launches.append((self.name, grid, args, kw))

    monkeypatch.setattr(decode_attention, "_split_kv_partial", Kernel("partial"))
    monkeypatch.setattr(decode_attention, "_split_kv_combine", Kernel("combine"))
    q, k = torch.zeros(1, 32, 1, 128, dtype=torch.bfloat16), torch.zeros(1, 8, 640, 128, dtype=torch.bfloat16)
    mask = torch.ones(1, 1, 1, 640, dtype=torch.bool)
    for fused in (True, False):
        monkeypatch.setattr(decode_attention, "FUSED_COMBINE", fused)
        launches.clear()
        decode_attention.split_kv_decode(q, k, k, mask, 1.0)
        assert [(name, grid) for name, grid, _, _ in launches] == [("partial", (20, 8, 1))] + (
            [] if fused else [("combine", (32, 1))])
        _, _, args, kw = launches[0]
        assert kw["FUSED"] is fused and kw["LSE"] is True
        if fused:
            assert args[7] is decode_attention.counters(q.device, 8) and args[7].dtype == torch.int32
            assert (kw["GN"], kw["PP"], kw["PC"]) == (4, 32, 32)  # 4 x 32 x 128 fp32: 128 a thread of 4 warps, one tile
        launches.clear()
        decode_attention.split_kv_decode(q.expand(32, -1, -1, -1), k.expand(32, -1, -1, -1), k.expand(32, -1, -1, -1),
                                          mask.expand(32, -1, -1, -1), 1.0)
        assert [(name, grid) for name, grid, _, _ in launches] == [("partial", (1, 8, 32))]
        assert launches[0][3]["FUSED"] is False


def test_split_kv_counters_are_grown_only_and_never_in_a_capture(monkeypatch):
    """decode_attention.counters: zero int32, one tensor a device of at least COUNTERS_MIN, the same tensor while it is
    large enough; a larger one replaces it (twice the size at least) and the old one is kept alive (a captured graph
    may replay into it); asked to grow during a CUDA graph capture it refuses instead of allocating."""
    from quantkit.eval import decode_attention

    monkeypatch.setattr(decode_attention, "_counters", {})
    monkeypatch.setattr(decode_attention, "_retired", [])
    cpu, least = torch.device("cpu"), decode_attention.COUNTERS_MIN
    first = decode_attention.counters(cpu, 8)
    assert first.dtype == torch.int32 and first.numel() == least and not first.any()
    assert decode_attention.counters(cpu, least) is first
    grown = decode_attention.counters(cpu, least + 1)
    assert grown.numel() == 2 * least and not grown.any() and decode_attention._retired == [first]
    assert decode_attention.counters(cpu, 1) is grown
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="before capturing"):
        decode_attention.counters(torch.device("cuda", 0), 8)


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("pdl", [True, False])
def test_split_kv_kernels_compiled_for_hopper_hold_the_launch_hooks_asked_for(pdl, fused, rope):
    """decode_attention.PDL: both kernels, compiled by Triton for sm_90 here (no GPU needed: PTX and ptxas's cubin),
    are programmatic launches that wait for the kernel before them (griddepcontrol.wait), then let the next one launch;
    without PDL neither instruction is there. FUSED (decode_attention.FUSED_COMBINE): the ranges' kernel stores its
    sums, then a barrier of the block, then one acq_rel add at GPU scope on the pair's counter; after it the counter's
    reset and only loads through the L2 (ld.global.cg: the ranges' sums); without FUSED no atomic and no such load.
    ROPE (rope_split_kv_decode) compiles to the same hooks, with the step's key and value stored (two 16-bit rows)."""
    triton = pytest.importorskip("triton")
    from quantkit.eval import decode_attention

    if not decode_attention._PDL_TRITON:
        pytest.skip("this Triton has no programmatic-launch hooks")
    from triton.backends.compiler import GPUTarget

    def compiled(kernel, types, constexprs, **options):
        names = kernel.arg_names
        signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in names}
        src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)

    ptrs = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "mask_ptr": "*u8", "o_ptr": "*fp32",
            "lse_ptr": "*fp32", "out_ptr": "*bf16", "count_ptr": "*i32", "scale": "fp32", "kn_ptr": "*bf16",
            "vn_ptr": "*bf16", "cos_ptr": "*bf16", "sin_ptr": "*bf16", "pos_ptr": "*i64"}
    launch = {"launch_pdl": True} if pdl else {}
    partial = compiled(decode_attention._split_kv_partial, ptrs,
                       {"G": 4, "GP": 16, "D": 128, "BS": 32, "LSE": True, "SCAN": 1024, "MASK_BOUND": True, "PDL": pdl,
                        "FUSED": fused, "GN": 4, "PP": 64, "PC": 32, "ROPE": rope}, **launch)
    combine = compiled(decode_attention._split_kv_combine, ptrs, {"PP": 64, "D": 128, "PDL": pdl}, **launch)
    for c in (partial, combine):
        ptx = c.asm["ptx"]
        wait, trigger = ptx.find("griddepcontrol.wait"), ptx.find("griddepcontrol.launch_dependents")
        assert (wait >= 0, trigger >= 0, c.metadata.launch_pdl) == (pdl, pdl, pdl)
        assert not pdl or wait < trigger  # the next kernel launches only once this one has waited
    lines = [line.split("//")[0].strip() for line in partial.asm["ptx"].splitlines()]
    # ROPE: the first range's key and value rows, a bf16 each a thread, in a branch (the output's are predicated)
    assert len([line for line in lines if line.startswith("st.global.b16")]) == (2 if rope else 0)
    atomics = [i for i, line in enumerate(lines) if "atom." in line]
    cg = [i for i, line in enumerate(lines) if "ld.global.cg" in line]
    if not fused:
        assert atomics == [] and cg == []
        return
    assert len(atomics) == 1 and all(q in lines[atomics[0]] for q in (".global", ".gpu", ".acq_rel", ".add"))
    (at,) = atomics
    stores = [i for i, line in enumerate(lines[:at]) if "st.global" in line]
    assert stores and any(line.startswith("bar.sync") for line in lines[stores[-1]:at])  # the sums, a barrier, the add
    after = [line for line in lines[at:] if "ld.global" in line]
    assert after and all("ld.global.cg" in line for line in after) and cg[0] > at
    assert any("st.global.b32" in line for line in lines[at:])  # the counter back to zero


def test_l2_prefetch_plan_pairs_the_linears_in_the_order_they_run():
    """quantkit.eval.prefetch: "next" chains every W4A16 linear of the fused model to the one after it, across
    blocks; "attention" keeps the q/k/v -> o pair of each block; warmed() sets W4A16Linear.warm on the requesting
    layers only, with the limits, and takes it back; a layer without the extension requests nothing (on CPU) and
    still computes; an unknown mode is refused."""
    from quantkit.eval import fuse, prefetch, random_weights
    from quantkit.kernels import W4A16Linear

    model, _, _ = random_weights.build("tiny-llama", group_size=32, dtype=torch.bfloat16, device="cpu",
                                       module_factory=lambda ql: W4A16Linear.from_quantized(ql, device="cpu"),
                                       progress=False)
    fuse.fuse_projections(model)
    blocks = len(model.model.layers)
    run = []
    for i in range(blocks):
        b = f"model.layers.{i}"
        run += [f"{b}.self_attn.q_proj.shared.fused", f"{b}.self_attn.o_proj", f"{b}.mlp.gate_up", f"{b}.mlp.down_proj"]
    assert prefetch.plan(model, "next") == list(zip(run, run[1:]))
    assert prefetch.plan(model, "attention") == [(run[4 * i], run[4 * i + 1]) for i in range(blocks)]
    assert prefetch.plan(model, "off") == []
    with pytest.raises(InputError, match="QUANTKIT_L2_PREFETCH"):
        prefetch.plan(model, "all")
    layers = dict(model.named_modules())
    from quantkit.kernels import ops

    assert ops.L2_PREFETCH_EVICT_FIRST is False and prefetch.settings()["evict_first"] is False
    with prefetch.warmed(model, "next", evict_first=True):
        assert ops.L2_PREFETCH_EVICT_FIRST is True and prefetch.settings()["evict_first"] is True
    assert ops.L2_PREFETCH_EVICT_FIRST is False  # set for the block only
    with prefetch.warmed(model, "attention", max_bytes=4096, max_m=4) as pairs:
        assert len(pairs) == blocks
        for a, b in pairs:
            assert layers[a].warm == (layers[b].packed, 4096, 4)
        assert all(layers[name].warm is None for name in run if name not in dict(pairs))
        x = torch.randn(3, layers[run[0]].in_features, dtype=torch.bfloat16)
        assert layers[run[0]].warm_next(3, x.dtype) == 0  # no GPU: nothing to request
        first = layers[run[0]]  # (q/k/v in rope order: fuse.ROPE_IN_QKV)
        assert torch.equal(first(x), W4A16Linear(first.packed, rope=first.rope)(x))
    assert all(layers[name].warm is None for name in run)
