"""convert holds about one decoder layer, not the embeddings nor the pending output shard: on a checkpoint whose
embedding is far larger than its layers, the peak resident set stays well under baseline + embedding."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from conftest import train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
EMBED_MB = 128

PROBE = r"""
import json, sys
import torch, transformers  # the baseline: what any convert has loaded
from quantkit import convert, recipes
def rss():
    return next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))
before = rss()
m = convert.convert(sys.argv[1], sys.argv[2], recipes.load(None), progress=False)
print(json.dumps({"before": before, "peak": m["timings"]["peak_rss_mb"]}))
"""


def big_embedding_checkpoint(directory: Path) -> Path:
    hidden, vocab, inter = 1024, EMBED_MB * (1 << 20) // 2 // 1024, 256
    cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=hidden, intermediate_size=inter,
               num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8, head_dim=128, vocab_size=vocab,
               max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype="bfloat16")
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: (torch.randn(*s, generator=g) * 0.02).to(torch.bfloat16)  # noqa: E731
    state = {"model.embed_tokens.weight": rnd(vocab, hidden), "lm_head.weight": rnd(vocab, hidden),
             "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)}
    for i in range(2):
        p = f"model.layers.{i}"
        for name, shape in {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden),
                            "self_attn.v_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
                            "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden),
                            "mlp.down_proj": (hidden, inter)}.items():
            state[f"{p}.{name}.weight"] = rnd(*shape)
        state[f"{p}.input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        state[f"{p}.post_attention_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    directory.mkdir(parents=True)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(cfg))
    train_tokenizer(directory)
    return directory


def test_peak_memory_excludes_embeddings_and_pending_shard(tmp_path):
    src = big_embedding_checkpoint(tmp_path / "src")
    run = subprocess.run([sys.executable, "-c", PROBE, str(src), str(tmp_path / "out")], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    # embedding and lm_head are 2 x 128 MB, both in the one pending shard (holding them costs 256 MB or more);
    # a block is 10 MB of weights, its working set a few tens of MB
    assert got["peak"] - got["before"] < EMBED_MB, got
