"""The decode step's greedy token on a GPU: torch's argmax over a Llama-3 vocabulary row (128,256 bf16 logits)
against quantkit.eval.throughput.greedy_token's two stages, each timed as 100 calls captured in one CUDA graph (warm
L2, as in a decode step's graph), after checking that the two give the same indices (tests/greedy_check.py).

    python3 bench/greedy_bench.py > bench/results/greedy_h100.log

bench/results/greedy_h100_4baab8f.log was made on the H100 in session 38 by this timing code run inline with
`python3 -c` (the last seconds of that session's device time), before it was put in this file; its check was the
same cases as tests/greedy_check.py's on logits drawn on the GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from greedy_check import check_greedy_token  # noqa: E402
from quantkit.eval.throughput import greedy_token  # noqa: E402

VOCAB = 128256
CALLS = 100


def time_graph(fn) -> float:
    """Microseconds a call: CALLS calls of fn captured in one CUDA graph, replayed once after a warm-up replay."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / CALLS


def main() -> int:
    if not torch.cuda.is_available():
        print("error: bench/greedy_bench.py times CUDA kernels; no CUDA device here", file=sys.stderr)
        return 1
    check_greedy_token("cuda")
    print("greedy == argmax on cuda: ok")
    for batch in (1, 8, 32):
        logits = torch.randn(batch, VOCAB, device="cuda", dtype=torch.bfloat16)
        for name, fn in (("argmax", lambda: logits.argmax(-1, keepdim=True)), ("greedy", lambda: greedy_token(logits))):
            print("batch", batch, name, round(time_graph(fn), 2), f"us a call (CUDA graph of {CALLS})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
