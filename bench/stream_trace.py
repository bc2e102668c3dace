"""When the decode kernel's blocks start, wait and leave, kernel after kernel, where they run back to back as in a
decode step (bench/chain_bench.py's chains: each role of the 32 layers alone, and the four roles chained; programmatic
launches from one CUDA graph). Needs the diagnostic build (csrc/w4a16_trace.h):

    QUANTKIT_KERNEL_DEFINES=QK_STREAM_TRACE=1 python3 bench/stream_trace.py --out stream_trace.json

For each kernel against the one before it (the GPU's global timer, ns): how long before (negative) or after the previous
kernel's last block left its first block started ("start"), its first block's wait for the previous kernel returned
("release"), its last block left ("period": the kernel's share of the chain), and the share of its blocks that had
started before the previous kernel's last block left ("early"). Medians over the chain's kernels, by role.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys

import torch

import chain_bench  # bench/ is on sys.path when this runs
from quantkit.eval import run_settings
from quantkit.kernels import build, self_check, testing

log = logging.getLogger("stream_trace")


def kernel_times(records: torch.Tensor) -> dict[int, dict]:
    """key (weights' address) -> the kernel's blocks' first and last start, wait return, loop end and exit (ns)."""
    out = {}
    for key in records[:, 0].unique().tolist():
        r = records[records[:, 0] == key]
        t = r[:, 2:6]
        waited = t[:, 1][t[:, 1] > 0]
        out[key] = {"blocks": len(r), "start": (int(t[:, 0].min()), int(t[:, 0].max())),
                    "wait": (int(waited.min()), int(waited.max())) if len(waited) else None,
                    "loop_end": (int(t[:, 2].min()), int(t[:, 2].max())),
                    "exit": (int(t[:, 3].min()), int(t[:, 3].max())),
                    "starts": t[:, 0]}
    return out


def chain_rows(times: dict[int, dict], sequence: list[tuple[str, int]]) -> list[dict]:
    rows = []
    for (_, prev_key), (role, key) in zip(sequence, sequence[1:]):
        prev, cur = times.get(prev_key), times.get(key)
        if prev is None or cur is None:
            continue
        last = prev["exit"][1]
        rows.append({"role": role, "blocks": cur["blocks"], "start_us": (cur["start"][0] - last) / 1e3,
                     "release_us": (cur["wait"][0] - last) / 1e3 if cur["wait"] else None,
                     "last_release_us": (cur["wait"][1] - last) / 1e3 if cur["wait"] else None,
                     "loop_us": (cur["loop_end"][1] - last) / 1e3, "period_us": (cur["exit"][1] - last) / 1e3,
                     "early": float((cur["starts"] < last).float().mean())})
    return rows


def summary(rows: list[dict]) -> dict:
    out = {}
    for role in sorted({r["role"] for r in rows}):
        mine = [r for r in rows if r["role"] == role]
        out[role] = {k: statistics.median(r[k] for r in mine if r[k] is not None)
                     for k in ("start_us", "release_us", "last_release_us", "loop_us", "period_us", "early", "blocks")}
        out[role]["kernels"] = len(mine)
    return out


def traced(ext, fn, reps: int = 3) -> torch.Tensor:
    """fn captured in a CUDA graph, replayed reps times, then once more with the trace emptied before: its records."""
    graph = torch.cuda.CUDAGraph()
    fn()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(reps):
        graph.replay()
    torch.cuda.synchronize()
    ext.stream_trace()
    graph.replay()
    torch.cuda.synchronize()
    return ext.stream_trace()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", default="1,8")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--group", type=int, default=128)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        print("stream_trace: no GPU; nothing to measure", file=sys.stderr)
        return 2
    if "-DQK_STREAM_TRACE=1" not in build.defines():
        raise SystemExit("stream_trace: set QUANTKIT_KERNEL_DEFINES=QK_STREAM_TRACE=1 (the diagnostic build)")
    device = torch.device("cuda")
    self_check(device)
    ext = build.load_extension()
    layers = chain_bench.make_layers(args.layers, args.group, device)
    result = {"command": run_settings.with_settings("python3 bench/stream_trace.py " + " ".join(sys.argv[1:])),
              "kernel_defines": build.defines(), "device": torch.cuda.get_device_name(device),
              "torch": torch.__version__, "cuda": torch.version.cuda, "layers": args.layers, "group": args.group,
              "runs": []}
    for m in [int(v) for v in args.ms.split(",")]:
        x = testing.random_activations(m, chain_bench.HIDDEN, dtype=torch.bfloat16, seed=3, device=device)
        every = [(role, layer[role].mma_weight.data_ptr()) for layer in layers for role in chain_bench.ROLES]
        chains = {"chain": (chain_bench.quantized_chain(layers, x, {}), every)}
        for role in chain_bench.ROLES:
            chains[f"alone_{role}"] = (chain_bench.alone_chain(layers, role, chain_bench.role_input(m, role, x)),
                                       [(role, layer[role].mma_weight.data_ptr()) for layer in layers])
        for name, (fn, sequence) in chains.items():
            records = traced(ext, fn)
            times = kernel_times(records)
            starts = records[:, 2].sort().values
            steps = starts.diff()
            resolution = int(steps[steps > 0].min()) if (steps > 0).any() else None
            rows = chain_rows(times, sequence)
            by_role = summary(rows)
            result["runs"].append({"m": m, "chain": name, "records": len(records), "timer_step_ns": resolution,
                                   "by_role": by_role, "kernels": rows})
            for role, s in by_role.items():
                log.info("M = %d %-14s %-8s start %6.2f  release %6.2f (last %6.2f)  loop end %6.2f  period %6.2f us  "
                         "early %.2f  (%d blocks, %d kernels)", m, name, role, s["start_us"], s["release_us"],
                         s["last_release_us"], s["loop_us"], s["period_us"], s["early"], s["blocks"], s["kernels"])
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
