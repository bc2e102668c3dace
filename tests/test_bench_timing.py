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


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA graphs, events and the spin kernel stood in for: returns the log of what ran, in order (a graph's replay
    as its contender's name, an eager call as ("eager", name), a spin as ("sleep", cycles)), and a contender maker."""
    ticks, log, capturing = iter(range(10**6)), [], []

    class Graph:
        name = None

        def replay(self):
            log.append(self.name)

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
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: log.append(("sleep", cycles)))

    def contender(name):
        def call():
            if capturing:
                capturing[-1].name = name
            else:
                log.append(("eager", name))
        return call

    return log, contender


def test_time_calls_interleaves_the_contenders(fake_cuda):
    log, contender = fake_cuda
    names = ["a", "b", "c"]
    out = kernel_bench.time_calls({n: contender(n) for n in names}, torch.zeros(64, dtype=torch.uint8), reps=4,
                                  calls=2)
    assert sorted(out) == names and all(t["us"] == pytest.approx(0.5) for t in out.values())  # 1 us / 2 calls
    assert log[:6] == [("eager", n) for n in names] + names  # a warm call and a warm replay each
    timed = log[6:]
    assert [timed[i:i + 3] for i in range(0, 12, 3)] == kernel_bench.rep_orders(names, 4)


def test_l2_prefetch_requests_the_layer_before_its_own_timed_call_only(fake_cuda, monkeypatch):
    """--l2-prefetch: every contender waits the same spin after the flush, untimed; only quantkit_l2's wait follows
    the request of its layer's weights (up to the eval's prefetch limit), and right before its own replay."""
    log, contender = fake_cuda
    layer = object()
    monkeypatch.setattr(kernel_bench.ops, "l2_prefetch",
                        lambda packed, dtype, max_bytes: log.append(("l2", packed is layer, dtype, max_bytes)))
    names = ["quantkit", "quantkit_l2", "cublas_bf16"]
    befores = kernel_bench.l2_prefetch_befores(names, layer, torch.bfloat16)
    out = kernel_bench.time_calls({n: contender(n) for n in names}, torch.zeros(64, dtype=torch.uint8), reps=3,
                                  before=befores)
    assert all(t["us"] == pytest.approx(1.0) for t in out.values())  # the waits are outside the timed replays
    timed, order = log[6:], [n for o in kernel_bench.rep_orders(names, 3) for n in o]
    wait = ("sleep", kernel_bench.L2_WAIT_CYCLES)
    expected = []
    for name in order:
        expected += ([("l2", True, torch.bfloat16, kernel_bench.prefetch.MAX_BYTES)] if name == "quantkit_l2" else [])
        expected += [wait, name]
    assert timed == expected


def test_skip_leaves_out_the_contenders_it_names_but_never_the_baseline_or_the_dispatch(monkeypatch):
    """--skip drops contenders by name (one that hung or failed on a device), on a Hopper stood in for."""
    from quantkit.kernels import ops, prepare, testing

    monkeypatch.setattr(ops, "has_wgmma", lambda device: True)
    monkeypatch.setattr(ops, "_capability", lambda device: (9, 0))
    ql = testing.random_qlinear(128, 256, group_size=128, sym=True, act_order=False, dtype=torch.bfloat16, seed=1)
    packed = prepare(ql, device="cpu")
    x = testing.random_activations(32, 256, dtype=torch.bfloat16, seed=1, device="cpu")
    args = (x, packed, None, None, 32, 128, 256, 128, 132, torch.device("cpu"), False, True)
    every = list(kernel_bench.contenders_of(*args))
    assert {"qk_wgmma_ws_sk_bt32_pipe", "probe_ws_nox", "probe_ws_wait", "qk_stream_wk"} <= set(every)
    kept = list(kernel_bench.contenders_of(*args, skip="_pipe$|^probe_|quantkit|cublas"))
    assert kept == [n for n in every if not (n.endswith("_pipe") or n.startswith("probe_") or "quantkit_" in n)]
    assert kept[:2] == ["cublas_bf16", "quantkit"]


def test_chain_bench_overrides_one_role_at_a_time_at_split_counts_its_grid_keeps():
    """bench/chain_bench.py's sweep: the default dispatch, then each role of a layer alone at every split count of
    SPLITS that the launch keeps (ops.grid_splits) and that leaves a split 4 chunks or more, through the workspace and
    (2 or more) through a cluster, and every kernel a plain launch; nothing beyond the default where the decode kernel
    does not run."""
    import chain_bench

    v = chain_bench.variants(1, 132, torch.device("cpu"))
    assert v.pop("default") == {}
    assert v.pop("pdl_off") == {role: {"pdl": False} for role in chain_bench.ROLES}
    assert all(len(over) == 1 for over in v.values())  # one role a variant
    assert v["o_s4_ws"] == {"o": {"splits": 4, "cluster": False}}
    assert v["down_s16_cl"] == {"down": {"splits": 16, "cluster": True}}
    assert "o_s1_ws" in v and "o_s1_cl" not in v  # one split: nothing for a cluster to add
    for role, (n, k) in chain_bench.ROLES.items():
        counts = {over[role]["splits"] for over in v.values() if role in over}
        assert counts == {s for s in chain_bench.SPLITS if (k // 64) // s >= 4}, role
    assert chain_bench.variants(64, 132, torch.device("cpu")) == {"default": {}}  # M = 64: not the decode kernel


def test_chain_bench_eight_warp_variants_at_one_token_tile():
    """--wk8: blocks of 8 warps sharing a tile, each role in 1 or 2 splits, every role unsplit, the mix with down in
    2 and that with o_proj in 2, every role in blocks of 4, and each role alone in them; only at one token tile."""
    import chain_bench

    v = chain_bench.wk_warps_variants(8)
    assert v["wk8_o_s1"] == {"o": {"wk_warps": 8, "splits": 1}}
    assert v["wk8_down_s2"] == {"down": {"wk_warps": 8, "splits": 2}}
    assert v["wk8_all_s1"] == {role: {"wk_warps": 8, "splits": 1} for role in chain_bench.ROLES}
    assert v["wk8_mix"]["down"] == {"wk_warps": 8, "splits": 2} and v["wk8_mix"]["qkv"]["splits"] == 1
    assert v["wk4_all"] == {role: {"wk_warps": 4} for role in chain_bench.ROLES}
    assert v["wk8_mix_o2"]["o"]["splits"] == 2 and v["wk8_mix_o2"]["down"]["splits"] == 2
    assert v["wk4_gate_up"] == {"gate_up": {"wk_warps": 4}}
    assert len(v) == 3 * len(chain_bench.ROLES) + 4
    assert chain_bench.wk_warps_variants(9) == {}
