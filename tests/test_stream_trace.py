"""bench/stream_trace.py's reading of the decode kernel's trace records (csrc/w4a16_trace.h), on records made up here:
each kernel's first and last block times, and each kernel against the one before it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import stream_trace  # noqa: E402


def record(key, block, sm, start, wait, loop_end, exit_):
    return [key, block | (sm << 32), start, wait, loop_end, exit_]


def test_kernels_against_the_one_before():
    base = 1_700_000_000_000_000_000  # the global timer's ns are large: int64 keeps them
    a, b = 0x7F0000001000, 0x7F0000002000
    rows = [record(a, 0, 1, base, base + 1000, base + 3000, base + 4000),
            record(a, 1, 2, base + 100, base + 1100, base + 3500, base + 5000),
            # kernel b: one block started 2 us before a's last block left, one after; one block never waited in its loop
            record(b, 0, 1, base + 3000, base + 6000, base + 8000, base + 9000),
            record(b, 1, 3, base + 5500, 0, base + 7000, base + 11000)]
    records = torch.tensor(rows, dtype=torch.int64)
    times = stream_trace.kernel_times(records)
    assert times[a]["start"] == (base, base + 100) and times[a]["exit"] == (base + 4000, base + 5000)
    assert times[b]["wait"] == (base + 6000, base + 6000)  # the block without a wait in its loop is left out
    rows = stream_trace.chain_rows(times, [("o", a), ("o", b)])
    assert len(rows) == 1
    r = rows[0]
    assert r["start_us"] == pytest.approx(-2.0) and r["release_us"] == pytest.approx(1.0)
    assert r["loop_us"] == pytest.approx(3.0) and r["period_us"] == pytest.approx(6.0)
    assert r["early"] == pytest.approx(0.5) and r["blocks"] == 2
    s = stream_trace.summary(rows + [{**r, "period_us": 8.0}])
    assert s["o"]["period_us"] == pytest.approx(7.0) and s["o"]["kernels"] == 2
    assert stream_trace.chain_rows(times, [("o", a), ("o", 0xDEAD)]) == []  # a kernel without records: no row
