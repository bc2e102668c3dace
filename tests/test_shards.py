"""The shard writer spills tensors to disk as they come and assembles shards that are byte for byte what
safetensors' own save_file writes; it keeps no reference to the tensors it was given."""

import gc
import json
import os
import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file

from quantkit import shards
from quantkit.shards import ShardWriter


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {
        "model.embed_tokens.weight": torch.randn(37, 24, generator=g).to(torch.bfloat16),
        "model.layers.0.mlp.down_proj.qweight": torch.randint(-2**31, 2**31 - 1, (6, 40), generator=g, dtype=torch.int32),
        "model.layers.0.mlp.down_proj.scales": torch.randn(3, 40, generator=g).to(torch.float16),
        "model.layers.0.mlp.down_proj.g_idx": torch.arange(48, dtype=torch.int32) // 16,
        "model.norm.weight": torch.randn(24, generator=g),
        "a.float64": torch.randn(5, generator=g, dtype=torch.float64),
        "b.int64": torch.arange(7),
        "c.uint8": torch.randint(0, 255, (9,), generator=g, dtype=torch.uint8),
        "d.int8": torch.randint(-128, 127, (3, 3), generator=g, dtype=torch.int8),
        "e.bool": torch.rand(11, generator=g) > 0.5,
        "f.scalar": torch.tensor(3.5),
        "g.empty": torch.zeros(0, 4),
        "h.int16": torch.randint(-1000, 1000, (4,), generator=g, dtype=torch.int16),
    }
    return out


def write(directory, tensors, **kwargs) -> list[str]:
    writer = ShardWriter(directory, **kwargs)
    for name, t in tensors.items():
        writer.add(name, t)
    return writer.close()


@pytest.mark.parametrize("chunk", [shards.CHUNK_BYTES, 8], ids=["whole", "in-pieces"])
def test_shard_bytes_equal_save_file(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(shards, "CHUNK_BYTES", chunk)
    tensors = sample_tensors()
    names = write(tmp_path, tensors)
    assert names == ["model-00001-of-00001.safetensors"]
    save_file(tensors, str(tmp_path / "expected.safetensors"), metadata={"format": "pt"})
    assert (tmp_path / names[0]).read_bytes() == (tmp_path / "expected.safetensors").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["expected.safetensors", "model-00001-of-00001.safetensors",
                                            "model.safetensors.index.json"], "no spill files left"


def test_without_copy_file_range(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    monkeypatch.setattr(shards, "CHUNK_BYTES", 16)
    tensors = sample_tensors()
    names = write(tmp_path, tensors)
    save_file(tensors, str(tmp_path / "expected.safetensors"), metadata={"format": "pt"})
    assert (tmp_path / names[0]).read_bytes() == (tmp_path / "expected.safetensors").read_bytes()


def test_cast_on_write(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "CHUNK_BYTES", 64)  # the cast goes piece by piece
    t = torch.randn(50, 33, generator=torch.Generator().manual_seed(1))
    writer = ShardWriter(tmp_path)
    writer.add("w", t, dtype=torch.bfloat16)
    writer.close()
    got = load_file(str(tmp_path / "model-00001-of-00001.safetensors"))["w"]
    assert got.dtype == torch.bfloat16 and torch.equal(got, t.to(torch.bfloat16))


def test_split_and_index(tmp_path):
    tensors = sample_tensors()
    names = write(tmp_path, tensors, max_bytes=2000)
    assert len(names) > 1 and names[-1].endswith(f"-of-{len(names):05d}.safetensors")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    loaded = {}
    for name in names:
        part = load_file(str(tmp_path / name))
        assert all(index["weight_map"][k] == name for k in part)
        loaded.update(part)
    assert set(loaded) == set(tensors)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    # a shard is cut before the tensor that would overflow it (a tensor larger than the limit gets a shard alone)
    expected, pending = [[]], 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        if expected[-1] and pending + size > 2000:
            expected.append([])
            pending = 0
        expected[-1].append(name)
        pending += size
    assert [sorted(k for k, v in index["weight_map"].items() if v == n) for n in names] == [sorted(e) for e in expected]


def test_keeps_no_reference(tmp_path):
    writer = ShardWriter(tmp_path)
    t = torch.randn(100, 100)
    ref = weakref.ref(t)
    writer.add("t", t)
    del t
    gc.collect()
    assert ref() is None, "the writer must not hold the tensor (a source tensor is a view of a memory-mapped shard)"
    writer.close()


def test_same_name_twice(tmp_path):
    writer = ShardWriter(tmp_path, max_bytes=10)
    writer.add("a", torch.zeros(4))
    writer.add("b", torch.zeros(4))  # flushes "a" into shard 1
    with pytest.raises(ValueError, match="tensor a written twice"):
        writer.add("a", torch.zeros(4))


def test_source_pieces_read_the_tensor(tmp_path):
    from quantkit.errors import InputError
    from quantkit.source import TensorSource

    tensors = {"a": torch.randn(33, 7).to(torch.bfloat16), "b": torch.arange(100, dtype=torch.int32), "c": torch.randn(5)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    with TensorSource(tmp_path) as src:
        for name, t in tensors.items():
            pieces = list(src.pieces(name, max_bytes=40))
            assert len(pieces) == -(-t.numel() * t.element_size() // 40)
            assert torch.equal(torch.cat(pieces), t.reshape(-1))
    with TensorSource(tmp_path) as src:  # a shard cut short after it was opened
        shard = tmp_path / "model.safetensors"
        shard.write_bytes(shard.read_bytes()[:-8])
        with pytest.raises(InputError, match="tensor a is cut short; re-download"):  # bf16: stored last
            list(src.pieces("a"))
