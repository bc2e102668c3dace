"""Where weights come from: a local checkpoint dir, a Hub id (through huggingface_hub's cache) or a GGUF file.

Tensors are read lazily by name from safetensors shards; nothing loads the whole model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open

from quantkit.errors import InputError

log = logging.getLogger(__name__)

# What `convert` needs from a Hub repo: config, tokenizer, generation settings and the weights.
HUB_ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "model*.safetensors",  # not consolidated.safetensors (Mistral repos ship both) nor nested copies
    "model.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "chat_template.*",
    "*.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
]

# Files copied verbatim from the source checkpoint into a converted one.
AUX_FILES = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
]


class TensorSource:
    """Lazy, by-name access to the tensors of a safetensors checkpoint directory."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        config_path = self.dir / "config.json"
        if not config_path.is_file():
            raise InputError(f"{config_path}: no config.json; pass a Hugging Face checkpoint directory")
        try:
            self.config = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{config_path}: not valid JSON ({e}); re-download the checkpoint") from e
        self._where = self._index()
        self._stack = ExitStack()
        self._handles: dict[Path, object] = {}
        self._headers: dict[Path, tuple[int, dict]] = {}

    def _index(self) -> dict[str, Path]:
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise InputError(f"{index}: unreadable index ({e}); re-download the checkpoint") from e
            where = {name: self.dir / shard for name, shard in weight_map.items()}
            for shard in sorted(set(where.values())):
                if not shard.is_file():
                    raise InputError(f"{shard}: shard named in {index.name} is missing; re-download the checkpoint")
            return where
        shards = sorted(self.dir.glob("*.safetensors"))
        if not shards:
            raise InputError(f"{self.dir}: no *.safetensors weights; convert .bin checkpoints to safetensors first")
        where = {}
        for shard in shards:
            for name in self._open(shard, register=False).keys():
                where[name] = shard
        return where

    def _open(self, shard: Path, register: bool = True):
        if register and shard in self._handles:
            return self._handles[shard]
        try:
            handle = safe_open(str(shard), framework="pt", device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{shard}: corrupt or unreadable safetensors shard ({e}); re-download it") from e
        if register:
            self._handles[shard] = handle
        return handle

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open(self._where[name]).get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        """The stored dtype as safetensors names it (BF16, F32, I32 ...)."""
        return self._open(self._where[name]).get_slice(name).get_dtype()

    def pieces(self, name: str, max_bytes: int = 1 << 22) -> Iterator[torch.Tensor]:
        """The flat values of tensor ``name``, in order, at most ``max_bytes`` at a time, read with plain file reads.
        get() returns a view of the shard's memory map, whose pages stay resident as long as it is mapped; these
        pieces are fresh buffers that nothing keeps once the caller drops them (for writing big kept tensors)."""
        from quantkit.shards import TORCH_DTYPES

        shard = self._where[name]
        data_start, header = self._header(shard)
        entry = header[name]
        dtype = TORCH_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise InputError(f"{shard}: tensor {name} has dtype {entry['dtype']}, which quantkit does not read")
        begin, end = entry["data_offsets"]
        step = max(dtype.itemsize, max_bytes // dtype.itemsize * dtype.itemsize)
        with open(shard, "rb", buffering=0) as f:
            f.seek(data_start + begin)
            for start in range(begin, end, step):
                piece = bytearray(min(step, end - start))
                if f.readinto(piece) != len(piece):
                    raise InputError(f"{shard}: tensor {name} is cut short; re-download the shard")
                yield torch.frombuffer(piece, dtype=dtype)
                del piece

    def _header(self, shard: Path) -> tuple[int, dict]:
        """Where the data of ``shard`` starts, and its safetensors header (name -> dtype, shape, data_offsets)."""
        if shard not in self._headers:
            try:
                with open(shard, "rb") as f:
                    (length,) = struct.unpack("<Q", f.read(8))
                    header = json.loads(f.read(length))
            except (OSError, struct.error, ValueError) as e:
                raise InputError(f"{shard}: corrupt or unreadable safetensors shard ({e}); re-download it") from e
            self._headers[shard] = (8 + length, header)
        return self._headers[shard]

    def get(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise KeyError(name)
        shard = self._where[name]
        try:
            return self._open(shard).get_tensor(name)
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{shard}: tensor {name} is unreadable ({e}); re-download the shard") from e

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> "TensorSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cache_root() -> Path:
    root = os.environ.get("QUANTKIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "quantkit"
    return Path(root)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_to_checkpoint(gguf_path: Path, *, dtype: torch.dtype = torch.float32) -> Path:
    """Dequantize a GGUF file into a normal HF checkpoint (config, tokenizer, safetensors), cached by content."""
    from quantkit.atomic import atomic_dir  # local import: keeps module import light

    digest = _file_digest(gguf_path)[:16]
    out = _cache_root() / "gguf" / f"{gguf_path.stem}-{digest}-{str(dtype).removeprefix('torch.')}"
    if (out / "config.json").is_file():
        return out
    log.info("dequantizing %s to a HF checkpoint in %s", gguf_path, out)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=dtype)
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        raise InputError(f"{gguf_path}: cannot read this GGUF with transformers ({e}); check the file and its architecture") from e
    model.hf_quantizer = None  # the weights are plain tensors now; let save_pretrained write them
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out, force=False) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out


def resolve(model: str) -> Path:
    """MODEL (a local dir, a .gguf file or a Hub id) -> a local checkpoint directory."""
    path = Path(model)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InputError(f"{path}: GGUF file not found")
        return gguf_to_checkpoint(path)
    if path.is_dir():
        return path
    if path.exists():
        raise InputError(f"{path}: neither a checkpoint directory nor a .gguf file")
    if model.startswith((".", "/")) or model.count("/") > 1:
        raise InputError(f"{model}: no such directory or file")
    return download(model)


def download(repo_id: str, *, revision: str | None = None) -> Path:
    """Resolve a Hub id through huggingface_hub's cache (HF_HOME, HF_ENDPOINT, HF_HUB_OFFLINE honoured)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_ALLOW_PATTERNS))
    except RepositoryNotFoundError as e:
        raise InputError(f"{repo_id}: no such model on the Hub (or it is private: log in with `hf auth login`)") from e
    except LocalEntryNotFoundError as e:
        raise InputError(f"{repo_id}: not in the local Hub cache and the Hub is unreachable or HF_HUB_OFFLINE is set") from e
    except HfHubHTTPError as e:
        raise InputError(f"{repo_id}: the Hub answered {e.response.status_code if e.response is not None else 'an error'}; try again later") from e
