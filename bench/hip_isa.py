"""The RDNA3 (gfx1100) ISA of csrc/, kernel by kernel, from Debian's clang-19 (no GPU): instructions, the dot2 and
WMMA instructions the design relies on, VGPRs, spills, calls and whether the stack size is known. CI's ISA test
(tests/test_hip_isa.py) compiles and reads the kernels the same way.

    python bench/hip_isa.py [--csrc DIR] [--out FILE.json]

prints a Markdown table (and writes the JSON with --out); --csrc compiles another checkout's csrc/ (to compare).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CSRC = Path(__file__).resolve().parents[1] / "csrc"
TU = "w4a16_instances.cu"


def compile_gfx1100(csrc: Path = CSRC, out: Path | None = None) -> str:
    """The assembly of csrc's instances for gfx1100 (-nogpulib: no device library, HIP headers only)."""
    clang = shutil.which("clang++-19")
    if clang is None:
        raise SystemExit("error: clang++-19 not found; install clang-19, libamdhip64-dev and rocm-device-libs")
    with tempfile.TemporaryDirectory() as tmp:
        path = out or Path(tmp) / "w4a16_gfx1100.s"
        cmd = [clang, "-x", "hip", "--offload-arch=gfx1100", "--cuda-device-only", "-nogpulib", "-O3", "-std=c++17",
               "-S", "-o", str(path), str(csrc / TU)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"clang-19 failed on {csrc / TU}: {res.stderr.strip()[:2000]}")
        return path.read_text()


def kernels(asm: str) -> dict[str, str]:
    """Kernel symbol -> its function body (from the symbol's label to its .Lfunc_end)."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^(_Z\w+):[^\n]*$(.*?)^\.Lfunc_end", asm, re.S | re.M)}


def metadata(asm: str) -> dict[str, dict[str, str]]:
    """Kernel symbol -> its code-object metadata fields (vgpr_count, uses_dynamic_stack, ...)."""
    meta = {}
    for entry in re.split(r"\n  - \.", asm[asm.find("amdhsa.kernels:"):]):
        name = re.search(r"\.name:\s+(\S+)", entry)
        if name:
            meta[name.group(1)] = dict(re.findall(r"\.(\w+):\s+(\S+)", entry))
    return meta


def summary(asm: str) -> list[dict]:
    """One row a kernel: its instructions, dot2 / WMMA instructions, calls, VGPRs, spills, dynamic stack."""
    meta, rows = metadata(asm), []
    for name, body in kernels(asm).items():
        ops = [line.split()[0] for line in body.splitlines()
               if line.startswith("\t") and line.strip() and not line.strip().startswith((".", ";"))]
        m = meta.get(name, {})
        rows.append({"kernel": name, "instructions": len(ops),
                     "dot2": sum(bool(re.match(r"v_(dual_)?dot2", op)) for op in ops),
                     "wmma": sum(op.startswith("v_wmma") for op in ops),
                     "calls": sum(op in ("s_swappc_b64", "s_setpc_b64", "s_call_b64") for op in ops),
                     "vgprs": int(m.get("vgpr_count", -1)), "vgpr_spills": int(m.get("vgpr_spill_count", -1)),
                     "dynamic_stack": m.get("uses_dynamic_stack") == "true"})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csrc", type=Path, default=CSRC)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows = summary(compile_gfx1100(args.csrc))
    command = "python bench/hip_isa.py" + (" " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
    if args.out:
        args.out.write_text(json.dumps({"command": command, "kernels": rows}, indent=1) + "\n")
    cols = ["instructions", "dot2", "wmma", "calls", "vgprs", "vgpr_spills", "dynamic_stack"]
    print(f"gfx1100, clang-19 -nogpulib -O3; `{command}`\n")
    print("| kernel | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for r in rows:
        print(f"| `{r['kernel']}` | " + " | ".join(str(r[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
