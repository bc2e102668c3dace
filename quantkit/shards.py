"""Write safetensors shards as they fill, and the model.safetensors.index.json that maps names to them.

Nothing is held in memory: each tensor's bytes go to a spill file beside the shard as soon as it is added (a
tensor read from a source shard is a view of that shard's memory map, so holding it would keep those pages
resident). When the pending tensors would exceed ``max_bytes`` the shard is assembled: the safetensors header,
then the tensors' bytes copied from the spill file in safetensors' own order, so that the file is byte for byte
what ``safetensors.torch.save_file`` writes for the same tensors (tests/test_shards.py checks it).

safetensors layout: u64 little-endian header length n, n bytes of JSON (compact, ``__metadata__`` first, then
the tensors in data order, padded with spaces to a multiple of 8), then the data. Tensors are ordered by dtype,
widest first (the order of ``DTYPE_ORDER``), then by name; ``data_offsets`` are relative to the data start.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

DEFAULT_MAX_SHARD_BYTES = 1 << 30
CHUNK_BYTES = 1 << 24  # casts and copies go in pieces of this size

# safetensors dtype names, in the order safetensors writes them (its Dtype enum, descending).
DTYPES = {
    torch.uint64: "U64", torch.int64: "I64", torch.float64: "F64", torch.float32: "F32", torch.uint32: "U32",
    torch.int32: "I32", torch.bfloat16: "BF16", torch.float16: "F16", torch.uint16: "U16", torch.int16: "I16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
DTYPE_ORDER = {name: rank for rank, name in enumerate(DTYPES.values())}
TORCH_DTYPES = {name: dtype for dtype, name in DTYPES.items()}


@dataclass(frozen=True)
class _Spilled:
    dtype: str
    shape: tuple[int, ...]
    offset: int  # in the spill file
    nbytes: int


def header_bytes(entries: dict[str, tuple[str, tuple[int, ...], int]], metadata: dict[str, str] | None) -> bytes:
    """The length-prefixed, space-padded safetensors header for ``entries`` (name -> (dtype, shape, nbytes)),
    given in data order."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, (dtype, shape, nbytes) in entries.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def safetensors_order(entries: dict[str, tuple[str, ...]]) -> list[str]:
    """Names in the order safetensors stores their data: widest dtype first, then by name."""
    return sorted(entries, key=lambda name: (DTYPE_ORDER[entries[name][0]], name))


def _copy_range(src, dst, offset: int, count: int) -> None:
    """Append ``count`` bytes of ``src`` from ``offset`` to ``dst`` (in the kernel where it can)."""
    copy = getattr(os, "copy_file_range", None)
    while count:
        n = 0
        if copy is not None:
            try:
                n = copy(src.fileno(), dst.fileno(), min(count, CHUNK_BYTES), offset)
            except OSError:
                copy = None
        if not n:
            src.seek(offset)
            data = src.read(min(count, CHUNK_BYTES))
            if not data:
                raise OSError(f"{src.name}: ended {count} bytes early")
            dst.write(data)
            dst.flush()  # the next piece may go through copy_file_range, at the file's position
            n = len(data)
        offset += n
        count -= n


class ShardWriter:
    """Add tensors one by one; whenever the pending ones would exceed ``max_bytes`` they become the next shard."""

    def __init__(self, directory: Path, *, max_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self._pending: dict[str, _Spilled] = {}
        self._pending_bytes = 0
        self._spill = None
        self._shards: list[list[str]] = []
        self._names: set[str] = set()
        self.total_bytes = 0

    def _spill_path(self) -> Path:
        return self.dir / f".shard-{len(self._shards):05d}.spill"

    def add(self, name: str, tensor: torch.Tensor, *, dtype: torch.dtype | None = None) -> None:
        """Write ``tensor`` (cast to ``dtype`` if given, piece by piece) into the pending shard; keeps no reference."""
        flat = tensor.reshape(-1)
        step = max(1, CHUNK_BYTES // max(tensor.element_size(), (dtype or tensor.dtype).itemsize))
        pieces = (flat[start : start + step] for start in range(0, flat.numel(), step))
        self.add_pieces(name, tuple(tensor.shape), pieces, dtype=dtype or tensor.dtype)

    def add_pieces(self, name: str, shape: tuple[int, ...], pieces: Iterable[torch.Tensor], *, dtype: torch.dtype) -> None:
        """Write a tensor of ``shape`` given as its flat values in consecutive ``pieces``, each cast to ``dtype``."""
        if name in self._names:
            raise ValueError(f"tensor {name} written twice")
        if dtype not in DTYPES:
            raise ValueError(f"tensor {name}: dtype {dtype} has no safetensors name")
        size = math.prod(shape) * dtype.itemsize
        if self._pending and self._pending_bytes + size > self.max_bytes:
            self.flush()
        if self._spill is None:
            self._spill = open(self._spill_path(), "w+b")
        offset = self._spill.tell()
        for piece in pieces:
            self._spill.write(piece.to(dtype).contiguous().view(torch.uint8).numpy().data)
            del piece  # before the next one is made
        if self._spill.tell() - offset != size:
            raise RuntimeError(f"tensor {name}: wrote {self._spill.tell() - offset} bytes, expected {size}")
        self._pending[name] = _Spilled(DTYPES[dtype], tuple(shape), offset, size)
        self._names.add(name)
        self._pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        """Assemble the pending tensors into the next shard file and drop the spill file."""
        if not self._pending:
            return
        spill_path = self._spill_path()
        final = self.dir / f".shard-{len(self._shards):05d}.safetensors"
        entries = {n: (s.dtype, s.shape, s.nbytes) for n, s in self._pending.items()}
        order = safetensors_order(entries)
        self._spill.flush()
        with open(final, "wb") as out:
            out.write(header_bytes({n: entries[n] for n in order}, {"format": "pt"}))
            out.flush()
            for name in order:
                spilled = self._pending[name]
                _copy_range(self._spill, out, spilled.offset, spilled.nbytes)
        self._spill.close()
        self._spill = None
        spill_path.unlink()
        self._shards.append(sorted(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Write the last shard, give shards their final names and write the index; returns the shard names."""
        self.flush()
        count = len(self._shards)
        names, weight_map = [], {}
        for i, tensors in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            os.rename(self.dir / f".shard-{i:05d}.safetensors", self.dir / final)
            names.append(final)
            weight_map.update({t: final for t in tensors})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return names
