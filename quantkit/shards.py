"""Write safetensors shards as they fill, and the model.safetensors.index.json that maps names to them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

DEFAULT_MAX_SHARD_BYTES = 1 << 30


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class ShardWriter:
    """Collect tensors; whenever the pending ones exceed ``max_bytes`` write them out as the next shard."""

    def __init__(self, directory: Path, *, max_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._pending or any(name in s for s in self._shards):
            raise ValueError(f"tensor {name} written twice")
        size = _nbytes(tensor)
        if self._pending and self._pending_bytes + size > self.max_bytes:
            self.flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        if not self._pending:
            return
        index = len(self._shards)
        save_file(self._pending, str(self.dir / f".shard-{index:05d}.safetensors"), metadata={"format": "pt"})
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
