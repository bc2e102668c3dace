"""The greedy next token of a throughput run's steps: the index argmax gives (the first of equal maxima), picked in
two stages of torch's reductions (greedy_token) or, with ONE_LAUNCH (the default where Triton runs), in one Triton
kernel that also writes it where the next step reads it (greedy_into).

torch's argmax over a whole vocabulary row runs as one block per row: 36-37 us a step on an H100 for Llama-3's
128,256 logits (bench/results/decode_profile_h100_721b2c1.json), paid by both models alike. In two stages (the maximum
of each chunk of a row, then of the chunks) it is a reduction over many rows and a small one: 11.7-13.6 us against
26.5-27.2 at batch 1-32, each timed alone in a CUDA graph (bench/results/greedy_h100_4baab8f.log). In a step that is
still four launches (the chunks' maxima, their argmax, the index's gather and add, the copy into the step's input);
the one-launch kernel (docs/kernel.md item 68) cuts each row among many programs, each of which folds its chunk's
maximum and first index into one 64-bit key (value above, index below, so that the larger key is the larger value
and, among equal values, the first index) with an atomic maximum; the last program of a row to arrive (an arrival
counter a row) takes the key, resets it and the counter for the next launch, and stores the index.
"""

from __future__ import annotations

import functools
import os

import torch

from quantkit.eval import device_state

try:  # Triton comes with torch's CUDA builds; without it (CPU builds) greedy_into runs greedy_token
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

GREEDY_CHUNK_MAX = 1024
GREEDY_CHUNK_MIN = 64
# greedy_into in one launch where Triton runs (a GPU, or its interpreter): 3.0-5.2 us against 13.4-14.7 at batch 1-32
# on an H100 (bench/results/greedy_h100_eee3a1d.log), on unless QUANTKIT_GREEDY_ONE_LAUNCH=0 (docs/kernel.md item
# 68). Read at every call.
ONE_LAUNCH = os.environ.get("QUANTKIT_GREEDY_ONE_LAUNCH", "1") == "1"
BLOCK = 4096  # logits a program of the one-launch kernel reads
NUM_WARPS = 4


def one_launch_on(device: torch.device) -> bool:
    """Whether greedy_into runs the one-launch kernel on device: ONE_LAUNCH, Triton, and a GPU or Triton's
    interpreter (device_state.runs_on)."""
    return ONE_LAUNCH and triton is not None and device_state.runs_on(torch.device(device))


def record(device: torch.device) -> str:
    """How a run on device records its greedy token (from session 38 on; before it: torch's argmax)."""
    return "one launch" if one_launch_on(device) else "two stages"


@functools.lru_cache(maxsize=None)
def greedy_chunk(vocab: int) -> int:
    """The largest divisor of ``vocab`` up to GREEDY_CHUNK_MAX, or 0 where it is below GREEDY_CHUNK_MIN (one
    stage then)."""
    chunk = next(c for c in range(min(vocab, GREEDY_CHUNK_MAX), 0, -1) if vocab % c == 0)
    return chunk if chunk >= GREEDY_CHUNK_MIN else 0


def greedy_token(logits: torch.Tensor) -> torch.Tensor:
    """The greedy next token of each row of ``logits`` [batch, vocab], as [batch, 1] indices: the index
    ``logits.argmax(-1, keepdim=True)`` gives (the first of equal maxima: the first chunk holding the row's maximum,
    its first position there), in two stages where the vocabulary has a divisor of GREEDY_CHUNK_MIN..MAX."""
    batch, vocab = logits.shape
    chunk = greedy_chunk(vocab)
    if not chunk:
        return logits.argmax(-1, keepdim=True)
    values, index = logits.reshape(batch, vocab // chunk, chunk).max(-1)
    best = values.argmax(-1, keepdim=True)
    return index.gather(-1, best).add_(best, alpha=chunk)  # one kernel for the index's two terms


if triton is not None:

    @triton.jit
    def _greedy(logits_ptr, out_ptr, key_ptr, count_ptr, vocab, s_row, s_out, BLOCK: tl.constexpr):
        """Program (c, b): chunk c of row b into the row's key (int64: the chunk maximum's order-preserving 32-bit
        image, offset to be non-negative, above 2^31 - 1 - its first index), then the row's arrival counter; the last
        to arrive stores the row's index at out_ptr and leaves the key and the counter zero."""
        c, b = tl.program_id(0), tl.program_id(1).to(tl.int64)
        i = c * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(logits_ptr + b * s_row + i, mask=i < vocab, other=float("-inf")).to(tl.float32) + 0.0  # -0 -> +0
        bits = x.to(tl.int32, bitcast=True)
        order = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # floats in order as signed integers (NaN above +inf)
        top = tl.max(order, 0)
        first = tl.min(tl.where(order == top, i, vocab), 0)
        key = ((top.to(tl.int64) + 2147483648) << 31) | (2147483647 - first).to(tl.int64)
        tl.atomic_max(key_ptr + b, key, sem="relaxed", scope="gpu")
        # this program's maximum before its arrival (one thread's release add, after a barrier of the block), so the
        # last to arrive, acquiring every earlier add, sees every chunk's maximum
        tl.debug_barrier()
        arrived = tl.atomic_add(count_ptr + b, 1, sem="acq_rel", scope="gpu")
        if arrived == tl.num_programs(0) - 1:
            best = tl.atomic_xchg(key_ptr + b, 0, sem="acq_rel", scope="gpu")
            tl.store(count_ptr + b, 0)
            tl.store(out_ptr + b * s_out, 2147483647 - (best & 2147483647))


_keys: dict = {}  # device -> the rows' keys (int64, zero between launches)
_counts: dict = {}  # device -> the rows' arrival counters (int32, zero between launches)
_retired: list = []  # replaced by larger ones: kept, since a captured graph may still replay into them
ROWS_MIN = 1024  # rows the first allocation covers


def one_launch_runs(logits: torch.Tensor) -> bool:
    """Whether greedy_into runs the one-launch kernel on these logits: one_launch_on their device, rows of a
    vocabulary below 2^31."""
    return one_launch_on(logits.device) and logits.dim() == 2 and logits.shape[1] < 2 ** 31


def greedy_into(logits: torch.Tensor, out: torch.Tensor) -> None:
    """out [batch, 1] (int64) = greedy_token(logits) [batch, vocab]: in one launch where one_launch_runs, else
    greedy_token and a copy."""
    if not one_launch_runs(logits):
        out.copy_(greedy_token(logits))
        return
    batch, vocab = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    keys = device_state.kept_zeros(_keys, _retired, logits.device, batch, torch.int64, ROWS_MIN, "greedy token: keys")
    counts = device_state.kept_zeros(_counts, _retired, logits.device, batch, torch.int32, ROWS_MIN,
                                     "greedy token: arrival counters")
    _greedy[(triton.cdiv(vocab, BLOCK), batch)](logits, out, keys, counts, vocab, logits.stride(0), out.stride(0),
                                                BLOCK=BLOCK, num_warps=NUM_WARPS)
