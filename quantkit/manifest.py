"""The record of what a conversion did, and the digest that ties eval results to the weights they measured."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "quantkit_manifest.json"
EVAL_JSON = "quantkit_eval.json"


def weights_digest(directory: str | Path) -> str:
    """sha256 over the names and bytes of every *.safetensors and *.gguf file in ``directory``, in name order."""
    h = hashlib.sha256()
    for path in sorted(Path(directory).iterdir()):
        if path.suffix not in (".safetensors", ".gguf"):
            continue
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path: str | Path, data: dict) -> None:
    from quantkit.atomic import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
