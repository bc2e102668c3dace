"""convert on tiny random models of real architectures: output layout, configs, determinism, bad inputs."""

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from conftest import grid_errors, make_checkpoint
from quantkit import convert, recipes
from quantkit.cli import main
from quantkit.errors import InputError, OutputExistsError, UnsupportedError
from quantkit.reference import read_linears
from quantkit.source import TensorSource

G32 = recipes.load("rdna3-w4a16-g32")


def tensors_of(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(directory.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "mixtral"])
def test_architectures(tmp_path, arch):
    src = make_checkpoint(tmp_path / "src", arch)
    manifest = convert.convert(str(src), tmp_path / "out", G32, progress=False)
    out = tensors_of(tmp_path / "out")
    with TensorSource(src) as s:
        original = {n: s.get(n) for n in s.names()}
    linear_names = [n[: -len(".weight")] for n, t in original.items()
                    if t.dim() == 2 and ".layers." in n and not n.endswith(("mlp.gate.weight", "moe.gate.weight"))]
    assert manifest["layers"]["quantized"] == len(linear_names)
    for name in linear_names:
        n, k = original[f"{name}.weight"].shape
        assert out[f"{name}.qweight"].shape == (k // 8, n) and out[f"{name}.qweight"].dtype == torch.int32
        assert out[f"{name}.qzeros"].shape == (k // 32, n // 8)
        assert out[f"{name}.scales"].shape == (k // 32, n) and out[f"{name}.scales"].dtype == torch.bfloat16
        assert torch.equal(out[f"{name}.g_idx"], torch.arange(k, dtype=torch.int32) // 32)
        assert f"{name}.weight" not in out
    # routers, norms and embeddings stay as they are (in the model dtype)
    for name, t in original.items():
        if name.endswith(("norm.weight", "mlp.gate.weight", "moe.gate.weight", "embed_tokens.weight")):
            assert torch.equal(out[name], t.to(torch.bfloat16))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    qcfg = config["quantization_config"]
    assert {k: qcfg[k] for k in ("quant_method", "bits", "group_size", "desc_act", "sym", "checkpoint_format")} == {
        "quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False, "sym": True, "checkpoint_format": "gptq"}
    assert json.loads((tmp_path / "out" / "quantize_config.json").read_text()) == qcfg
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(out)


def test_dequantized_weights_track_the_originals(tmp_path, tiny_llama):
    convert.convert(str(tiny_llama), tmp_path / "out", recipes.load("w4a16-g32-asym"), progress=False)
    with TensorSource(tmp_path / "out") as q, TensorSource(tiny_llama) as s:
        linears = read_linears(q, q.config["quantization_config"])
        for name, ql in linears.items():
            err, scale, inside = grid_errors(ql, s.get(f"{name}.weight").float())
            assert bool((err[inside] <= scale[inside] / 2 * (1 + 1e-5)).all()), name


def test_tied_embeddings_stay_tied(tmp_path):
    """Tied embeddings: no lm_head tensor is written and config.json still says tie_word_embeddings, so loaders tie
    lm_head to the embedding; an untied model keeps its own lm_head and says so."""
    src = make_checkpoint(tmp_path / "src", "llama", tie_word_embeddings=True)
    convert.convert(str(src), tmp_path / "out", G32, progress=False)
    assert "lm_head.weight" not in tensors_of(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True
    untied = make_checkpoint(tmp_path / "src2", "llama", tie_word_embeddings=False)
    convert.convert(str(untied), tmp_path / "out2", G32, progress=False)
    assert tensors_of(tmp_path / "out2")["lm_head.weight"].dtype == torch.bfloat16
    assert json.loads((tmp_path / "out2" / "config.json").read_text())["tie_word_embeddings"] is False


def test_deterministic_bytes(tmp_path, tiny_llama):
    for name in ("a", "b"):
        convert.convert(str(tiny_llama), tmp_path / name, G32, progress=False, max_shard_bytes=60_000)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len([f for f in files if f.endswith(".safetensors")]) > 1, "small shards force several"
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for f in files:
        a, b = (tmp_path / "a" / f).read_bytes(), (tmp_path / "b" / f).read_bytes()
        if f == "quantkit_manifest.json":  # identical but for the timings
            a, b = (json.loads(x) for x in (a, b))
            a.pop("timings"), b.pop("timings")
        assert a == b, f


def test_shards_are_written_as_they_fill(tmp_path, tiny_llama, monkeypatch):
    """A shard goes to disk as soon as it is full, not at the end: when the last decoder block starts, the shards
    filled so far (one of them holding the first block's quantized tensors) are on disk with their final bytes and
    more are still to come; the index maps every tensor to one of the shards."""
    on_disk = []
    convert_layer = convert._convert_layer

    def spy(layer, src, quantizer, writer, *args):
        on_disk.append([p.read_bytes() for p in sorted(writer.dir.glob("*.safetensors"))])
        return convert_layer(layer, src, quantizer, writer, *args)

    monkeypatch.setattr(convert, "_convert_layer", spy)
    out = tmp_path / "out"
    manifest = convert.convert(str(tiny_llama), out, G32, progress=False, max_shard_bytes=16_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == manifest["shards"]
    assert all(s.endswith(f"-of-{len(manifest['shards']):05d}.safetensors") for s in manifest["shards"])
    final = {(out / name).read_bytes(): name for name in manifest["shards"]}
    written = [final.get(data) for data in on_disk[-1]]
    assert None not in written and 0 < len(written) < len(manifest["shards"])
    assert index["weight_map"]["model.layers.0.mlp.gate_proj.qweight"] in written


def test_manifest(tmp_path, tiny_llama):
    manifest = convert.convert(str(tiny_llama), tmp_path / "out", G32, progress=False)
    on_disk = json.loads((tmp_path / "out" / "quantkit_manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["recipe"]["name"] == "rdna3-w4a16-g32" and manifest["version"]
    assert len(manifest["relative_error"]) == manifest["layers"]["quantized"] == 14
    assert all(0 < e < 0.2 for e in manifest["relative_error"].values())
    assert len(manifest["timings"]["per_layer_s"]) == 2 and manifest["timings"]["peak_rss_mb"] > 0


def test_group_size_that_does_not_divide_k(tmp_path):
    src = make_checkpoint(tmp_path / "src", "llama", hidden_size=96, intermediate_size=192, head_dim=24)
    g64 = recipes.override(G32, group_size=64)
    with pytest.raises(InputError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight: group size 64 does not divide "
                       r"K=96; choose a group size that divides it or keep the layer with --skip"):
        convert.convert(str(src), tmp_path / "out", recipes.override(g64, skip=("*.self_attn.*",)), progress=False)
    assert not (tmp_path / "out").exists()
    # keeping those layers unquantized with --skip works: only down_proj (K=192) is quantized
    skip = ("*.self_attn.*", "re:mlp\\.(gate|up)_proj$")
    manifest = convert.convert(str(src), tmp_path / "out", recipes.override(g64, skip=skip), progress=False)
    assert manifest["layers"]["quantized"] == 2 and manifest["layers"]["kept_unquantized"] == 12


def test_skip_keeps_layers_in_model_dtype(tmp_path, tiny_llama):
    manifest = convert.convert(str(tiny_llama), tmp_path / "out", recipes.override(G32, skip=("*.down_proj",)), progress=False)
    out = tensors_of(tmp_path / "out")
    assert manifest["layers"]["skipped"] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert out["model.layers.0.mlp.down_proj.weight"].dtype == torch.bfloat16
    assert "model.layers.0.mlp.down_proj.qweight" not in out


def test_existing_output_needs_force(tmp_path, tiny_llama):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--force"):
        convert.convert(str(tiny_llama), tmp_path / "out", G32, progress=False)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    convert.convert(str(tiny_llama), tmp_path / "out", G32, progress=False, force=True)
    assert not (tmp_path / "out" / "keep.txt").exists()


def test_interrupted_run_leaves_nothing(tmp_path, tiny_llama, monkeypatch):
    calls = []

    def explode(self, layer, weights):
        calls.append(layer.index)
        if layer.index == 1:
            raise KeyboardInterrupt
        return original(self, layer, weights)

    from quantkit.methods import RTNQuantizer

    original = RTNQuantizer.quantize_layer
    monkeypatch.setattr(RTNQuantizer, "quantize_layer", explode)
    with pytest.raises(KeyboardInterrupt):
        convert.convert(str(tiny_llama), tmp_path / "out", G32, progress=False)
    assert calls == [0, 1]
    assert os.listdir(tmp_path) == [], "no output and no partial directory"


def test_stale_partial_dir_of_a_killed_run_is_cleared(tmp_path, tiny_llama):
    stale = tmp_path / ".out.partial-abc123"
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"half")
    convert.convert(str(tiny_llama), tmp_path / "out", G32, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_unsupported_architecture(tmp_path, tiny_llama):
    src = tmp_path / "src"
    src.mkdir()
    for f in tiny_llama.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    config = json.loads((src / "config.json").read_text())
    config["model_type"] = "gpt_bigcode"
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedError, match="model_type 'gpt_bigcode' is not supported; supported: llama"):
        convert.convert(str(src), tmp_path / "out", G32, progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_and_corrupt_inputs(tmp_path, tiny_llama):
    with pytest.raises(InputError, match="no such directory or file"):
        convert.convert(str(tmp_path / "nope" / "model"), tmp_path / "out", G32, progress=False)
    with pytest.raises(InputError, match="GGUF file not found"):
        convert.convert(str(tmp_path / "missing.gguf"), tmp_path / "out", G32, progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_llama.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    shard = next(bad.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[: 200])
    with pytest.raises(InputError, match=rf"{shard.name}: corrupt or unreadable safetensors shard"):
        convert.convert(str(bad), tmp_path / "out", G32, progress=False)
    (bad / "config.json").unlink()
    with pytest.raises(InputError, match="no config.json"):
        convert.convert(str(bad), tmp_path / "out", G32, progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_shard_named_in_index(tmp_path, tiny_llama):
    convert.convert(str(tiny_llama), tmp_path / "q", G32, progress=False, max_shard_bytes=60_000)
    victim = sorted((tmp_path / "q").glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(InputError, match=rf"{victim.name}: shard named in model.safetensors.index.json is missing"):
        TensorSource(tmp_path / "q")


def test_rdna3_warning(tmp_path, tiny_llama, caplog):
    convert.convert(str(tiny_llama), tmp_path / "a", recipes.load("w4a16-g32-asym"), progress=False)
    assert "RDNA3 W4A16 kernel will refuse this checkpoint: asymmetric" in caplog.text
    assert "asymmetric zero points in GPTQ format v1: GPTQModel refuses" in caplog.text
    caplog.clear()
    convert.convert(str(tiny_llama), tmp_path / "c", recipes.override(recipes.load("w4a16-g32-asym"),
                                                                     checkpoint_format="gptq_v2"), progress=False)
    assert "GPTQModel refuses" not in caplog.text
    caplog.clear()
    convert.convert(str(tiny_llama), tmp_path / "b", G32, progress=False)
    assert "RDNA3" not in caplog.text and "GPTQModel" not in caplog.text


def test_overridden_recipe_is_named_by_its_overrides(tmp_path, tiny_llama):
    assert recipes.override(G32, group_size=32, sym=True).name == "rdna3-w4a16-g32"  # nothing changed
    r = recipes.override(G32, sym=False, group_size=64)
    assert r.name == "rdna3-w4a16-g32+group_size,sym"
    convert.convert(str(tiny_llama), tmp_path / "o", r, progress=False)
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["quantization_config"]["meta"]["recipe"] == "rdna3-w4a16-g32+group_size,sym"


def test_recipe_validation(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: rtn\ngroup_size: 48\n")
    with pytest.raises(InputError, match=r"bad\.yaml: group_size: 48 is not one of 32, 64, 128"):
        recipes.load(str(bad))
    bad.write_text("methd: rtn\n")
    with pytest.raises(InputError, match=r"unknown key 'methd'"):
        recipes.load(str(bad))
    bad.write_text("sym: maybe\n")
    with pytest.raises(InputError, match="sym must be true or false"):
        recipes.load(str(bad))
    with pytest.raises(InputError, match="no such file or shipped recipe; shipped: .*rdna3-w4a16-g32"):
        recipes.load("nope")
    for name in recipes.available():
        recipes.load(name)


def test_cli_overrides_recipe_and_errors_are_one_line(tmp_path, tiny_llama):
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(tiny_llama), "--out", str(tmp_path / "o"), "--recipe", "w4a16-g128",
                                  "--group-size", "64", "--asym"])
    assert result.exit_code == 0, result.output
    qcfg = json.loads((tmp_path / "o" / "config.json").read_text())["quantization_config"]
    assert (qcfg["group_size"], qcfg["sym"]) == (64, False)
    result = runner.invoke(main, ["convert", str(tiny_llama), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == f"error: {tmp_path / 'o'}: already exists; pass --force to replace it"
    result = runner.invoke(main, ["inspect", str(tmp_path / "o"), "--json"])
    info = json.loads(result.output)
    assert info["linears_quantized"] == 14 and info["group_size"] == 64 and info["sym"] is False
    assert 4.0 < info["bits_per_weight_quantized"] < 5.0
