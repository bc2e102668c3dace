"""convert's download side: a Hub id resolves through snapshot_download (the same client as push), fetching
only the files convert needs, and works offline from the cache. Against the Hub stand-in on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hub_fixtures import hub  # noqa: F401 - fixture
from quantkit import source
from quantkit.errors import InputError

REPO = "tiny-org/base-model"
NEEDED = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json"}
NOT_NEEDED = {"pytorch_model.bin", "README.md", "onnx/model.onnx", "flax_model.msgpack", "training_args.json"}


def _checkpoint(tmp_path: Path) -> dict[str, bytes]:
    weights = tmp_path / "w.safetensors"
    save_file({"model.embed_tokens.weight": torch.arange(64, dtype=torch.float32).reshape(8, 8),
               "model.norm.weight": torch.ones(8)}, str(weights))
    files = {
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 8}).encode(),
        "generation_config.json": b'{"eos_token_id": 2}',
        "model.safetensors": weights.read_bytes(),
        "tokenizer.json": b'{"version": "1.0"}',
        "tokenizer_config.json": b"{}",
        "special_tokens_map.json": b"{}",
    }
    files.update({name: f"not for convert: {name}".encode() for name in NOT_NEEDED})
    return files


def _resolves(hub) -> int:
    return hub.count("GET", r"/resolve/")


def test_download_fetches_only_what_convert_needs(hub, tmp_path):
    files = _checkpoint(tmp_path)
    hub.create_repo(REPO, files=files)
    path = source.resolve(REPO)
    got = {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert got == {name: files[name] for name in NEEDED}
    for name in NOT_NEEDED:
        assert hub.count("GET", rf"/resolve/[^/]+/{name}$") == 0 and hub.count("HEAD", rf"/resolve/[^/]+/{name}$") == 0
    with source.TensorSource(path) as src:
        assert torch.equal(src.get("model.embed_tokens.weight"), torch.arange(64, dtype=torch.float32).reshape(8, 8))


def test_offline_resolves_from_the_cache_without_a_request(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    hub.create_repo(REPO, files=_checkpoint(tmp_path))
    online = source.resolve(REPO)
    before = len(hub.state.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert source.resolve(REPO) == online
    assert len(hub.state.requests) == before


def test_offline_with_an_empty_cache_is_a_clear_error(hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError, match=r"not in the local Hub cache .*HF_HUB_OFFLINE"):
        source.resolve(REPO)
    assert hub.state.requests == []


def test_hub_down_falls_back_to_the_cache_and_says_so_without_one(hub, tmp_path):
    hub.create_repo(REPO, files=_checkpoint(tmp_path))
    cached = source.resolve(REPO)
    hub.fail("GET", r"^/api/models/", status=503, times=100)
    assert source.resolve(REPO) == cached
    hub.create_repo("tiny-org/never-downloaded", files=_checkpoint(tmp_path))
    with pytest.raises(InputError, match=r"not in the local Hub cache and the Hub is unreachable"):
        source.resolve("tiny-org/never-downloaded")


def test_missing_or_private_repo(hub, tmp_path, monkeypatch):
    with pytest.raises(InputError, match=r"no such model on the Hub"):
        source.resolve("tiny-org/nope")
    hub.create_repo("bob/secret", private=True, files=_checkpoint(tmp_path))
    with pytest.raises(InputError, match=r"or it is private: log in"):
        source.resolve("bob/secret")  # alice's token cannot see bob's private repo


def test_offline_in_a_fresh_process_from_the_environment(hub, tmp_path):
    hub.create_repo(REPO, files=_checkpoint(tmp_path))
    online = source.resolve(REPO)
    code = "import sys; from quantkit import source; print(source.resolve(sys.argv[1]))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    before = len(hub.state.requests)
    proc = subprocess.run([sys.executable, "-c", code, REPO], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip().splitlines()[-1]) == online
    assert len(hub.state.requests) == before
