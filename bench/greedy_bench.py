"""The decode step's greedy token on a GPU: torch's argmax over a Llama-3 vocabulary row (128,256 bf16 logits)
against quantkit.eval.greedy's two stages (greedy_token; "into": with the copy into the step's token tensor, as a step
runs it) and its one-launch kernel (greedy_into with ONE_LAUNCH), after checking that they give argmax's indices
(tests/greedy_check.py). Each is timed by kernel_bench.time_calls as CALLS calls captured in one CUDA graph with no
flush between them (warm L2, as in a decode step's graph), median of --reps replays.

    python3 bench/greedy_bench.py > bench/results/greedy_h100.log

bench/results/greedy_h100_4baab8f.log was made on the H100 in session 38 by code run inline with `python3 -c` (the
last seconds of that session's device time): the same CALLS calls in one graph, but one timed replay each instead of
time_calls' median; its check was the same cases as tests/greedy_check.py's on logits drawn on the GPU.
bench/results/greedy_h100_eee3a1d.log is this script's, on the H100 in session 57 (launches_round.sh step 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from greedy_check import check_greedy_into, check_greedy_token  # noqa: E402
from kernel_bench import time_calls  # noqa: E402
from quantkit.eval import greedy  # noqa: E402

VOCAB = 128256
CALLS = 100


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20, help="timed replays of each graph (median reported)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench/greedy_bench.py times CUDA kernels; no CUDA device here", file=sys.stderr)
        return 1
    check_greedy_token("cuda")
    check_greedy_into("cuda")
    print("greedy == argmax on cuda, in two stages and in one launch: ok")

    def into(logits, token, one_launch):
        greedy.ONE_LAUNCH = one_launch  # read at every call (here: as each graph is captured)
        greedy.greedy_into(logits, token)

    for batch in (1, 8, 32):
        logits = torch.randn(batch, VOCAB, device="cuda", dtype=torch.bfloat16)
        token = torch.zeros(batch, 1, dtype=torch.long, device="cuda")
        one = {"argmax": lambda: logits.argmax(-1, keepdim=True), "greedy": lambda: greedy.greedy_token(logits),
               "greedy_into": lambda: into(logits, token, False), "one_launch": lambda: into(logits, token, True)}
        fns = {name: (lambda f=f: [f() for _ in range(CALLS)]) for name, f in one.items()}
        # cache="rotate": no flush between replays (its flush tensor is not used)
        times = time_calls(fns, torch.empty(1, device="cuda"), args.reps, cache="rotate", calls=CALLS)
        for name, t in times.items():
            print("batch", batch, name, round(t["us"], 2), f"us a call (CUDA graph of {CALLS}, median of {args.reps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
