"""Host-only checks of csrc/ logic (tests/*_check.cu): built with nvcc, fed their cases on stdin, one a line; each
prints its failures and ends with "N cases, F failures" (exit status 1 on any)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NVCC = shutil.which("nvcc")


def run(source: str, lines: list[str], tmp_path: Path, flags: tuple[str, ...] = ()) -> None:
    """Build tests/<source> against csrc/ and assert that it passes all of ``lines``."""
    exe = tmp_path / Path(source).stem
    cmd = [NVCC, "-std=c++17", "-O2", *flags, "-I", str(ROOT / "csrc"), str(ROOT / "tests" / source), "-o", str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"nvcc failed: {res.stderr.strip()[:2000]}"
    out = subprocess.run([str(exe)], input="".join(line + "\n" for line in lines), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    assert out.stdout.strip().endswith(f"{len(lines)} cases, 0 failures"), out.stdout[-3000:]
