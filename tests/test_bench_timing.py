"""bench/kernel_bench.py's timing on the CPU, with CUDA graphs and events stood in for: every contender of a shape is
timed in the same loop, each repeat running each once in a shuffled order, so that none always follows the same
one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import kernel_bench  # noqa: E402


def test_rep_orders_shuffle_who_comes_before_whom():
    names = ["cublas_bf16", "quantkit", "qk_dequant", "qk_wgmma_ws", "torch_int4"]
    orders = kernel_bench.rep_orders(names, 20)
    assert len(orders) == 20 and all(sorted(o) == sorted(names) for o in orders)
    before = {n: {o[o.index(n) - 1] for o in orders if o.index(n) > 0} for n in names}
    assert all(len(b) >= 3 for b in before.values()), before  # no contender always follows the same one
    assert orders == kernel_bench.rep_orders(names, 20)  # seeded: a run can be repeated as it was
    assert kernel_bench.rep_orders([], 3) == [[], [], []]


def test_time_calls_interleaves_the_contenders(monkeypatch):
    ticks, replays, capturing = iter(range(10**6)), [], []

    class Graph:
        name = None

        def replay(self):
            replays.append(self.name)

    class Capture:
        def __init__(self, graph):
            self.graph = graph

        def __enter__(self):
            capturing.append(self.graph)

        def __exit__(self, *exc):
            capturing.pop()
            return False

    class Event:
        def __init__(self, enable_timing):
            self.t = None

        def record(self):
            self.t = next(ticks)

        def elapsed_time(self, end):  # ms between two records: each replay "takes" one tick, 1 us
            return (end.t - self.t) * 1e-3

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", Capture)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    eager = []

    def contender(name):
        def call():
            if capturing:
                capturing[-1].name = name
            else:
                eager.append(name)
        return call

    names = ["a", "b", "c"]
    out = kernel_bench.time_calls({n: contender(n) for n in names}, torch.zeros(64, dtype=torch.uint8), reps=4,
                                  calls=2)
    assert sorted(out) == names and all(t["us"] == pytest.approx(0.5) for t in out.values())  # 1 us / 2 calls
    assert eager == names and replays[:3] == names  # a warm call and a warm replay each
    timed = replays[3:]
    assert [timed[i:i + 3] for i in range(0, 12, 3)] == kernel_bench.rep_orders(names, 4)
