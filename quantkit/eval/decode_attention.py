"""Split-KV decoding attention for the throughput runs' decode steps (quantkit.eval.attention.DECODE_KERNEL "split",
the throughput runs' default: Settings.decode_attention).

A decode step has one query token a sequence; SDPA's kernels give each (sequence, KV head) one block that walks the
whole cache, so at batch 1 the step's attention runs on 8 blocks (Llama-3-8B) and at batch 32 reads the cache at about
a quarter of the copy rate (docs/kernel.md item 37). Here the cache of each (sequence, KV head) is cut into ranges
among enough programs to fill the GPU: each computes, for the query heads of its KV head's group, its range's
softmax-weighted sum of V and the log-sum-exp of its scores (Triton, tensor-core dots over blocks of positions), and
the last program of each (sequence, KV head) to store its range weighs all the pair's ranges by their log-sum-exps, in
the same kernel (FUSED_COMBINE: an arrival counter a pair; off, a second kernel does it). The ranges cut the sequence's
cache up to its last position that attends, which each program finds in the mask: a static cache's positions not yet
written are never read, and its programs share what is there (the split count, planned for the whole cache, stays
fixed, so a CUDA graph of the step replays at any length). Where one range a pair comes nearest to filling the GPU
(batch 23 and more on Llama-3-8B shapes), each program writes the output itself and there is nothing to combine. One
custom op (``quantkit::split_kv_decode``), opaque to torch.compile, so a compiled and graph-captured step launches the
kernels as they are.

Inputs as transformers' attention functions get them: query [B, H, 1, D], key/value [B, H_kv, S, D] (a static cache),
a boolean mask [B, 1, 1, >= S] of the positions that attend (at least one a sequence).
"""

from __future__ import annotations

import math
import os

import torch

from quantkit.eval import device_state

# Launch settings, read at every call (bench/decode_attention_bench.py --sweep measures the alternatives)
BLOCK_S = 32  # cache positions a dot covers
SCAN = 1024  # mask positions a program reads at a time to find its sequence's last attending position
# The ranges end at that position where the plan's ranges are more than one block (ends_at_last_kept); False: they cut
# the whole cache (the bench's split_full)
MASK_BOUND = True
PROGRAMS_PER_SM = 2  # the programs plan() aims at, per multiprocessor of the GPU
# plan()'s split count: the nearest to that aim ("nearest": one range a pair at batch 32 on Llama-3-8B shapes, 26.9 us
# a layer against 28.5 for two ranges and the combining kernel, bench/results/decode_attention_h200_e7c49e1.json; it was
# the slower before the ranges ended at the last attending position: 34.8 against 30.5, decode_attention_h200_dd5322e)
# or the next above it ("up")
SPLITS_ROUND = os.environ.get("QUANTKIT_SPLITS_ROUND", "nearest")
NUM_WARPS = 4
# Programmatic dependent launch (Hopper and later): the kernels are programmatic dependent launches that wait for
# the kernel before them (Triton's gdc_wait: the ranges' kernel for q and the cache, the combining kernel for the
# ranges' sums) and then let the next kernel launch (gdc_launch_dependents), so that the layer after attention,
# o_proj, launched as a programmatic dependent of ours (quantkit.eval.fuse sets the 4-bit model's), requests its
# first weights while attention finishes instead of after it (docs/kernel.md item 55: with item 56's launches, the
# compiled batch-1 decode 6.7% faster on one H100). QUANTKIT_ATTENTION_PDL=0 turns it off (the eval records it with
# the other settings).
PDL = os.environ.get("QUANTKIT_ATTENTION_PDL", "1") != "0"
# Where there are ranges: the last of a (sequence, KV head)'s ranges to finish combines them in the ranges' kernel
# (an arrival counter a pair, counters()) instead of a second kernel; QUANTKIT_SPLIT_KV_FUSED_COMBINE=0: the
# combining kernel (bench/decode_attention_bench.py times both)
FUSED_COMBINE = os.environ.get("QUANTKIT_SPLIT_KV_FUSED_COMBINE", "1") != "0"

try:  # Triton comes with torch's CUDA builds; without it (CPU builds) nothing here runs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

try:  # the grid-dependency hooks and the launch option that asks for a programmatic launch (Triton 3.4 and later)
    from triton.backends.nvidia.compiler import CUDAOptions
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    _PDL_TRITON = "launch_pdl" in CUDAOptions.__dataclass_fields__
except ImportError:  # pragma: no cover - depends on the install
    _PDL_TRITON = False


def available() -> bool:
    return triton is not None


def pdl_on(device: torch.device) -> bool:
    """Whether the kernels run with programmatic dependent launch (PDL) on this device: asked for, a Triton that has
    it, a GPU of compute capability 9.0 or later."""
    return (PDL and _PDL_TRITON and device.type == "cuda" and not torch.version.hip
            and torch.cuda.get_device_capability(device)[0] >= 9)


HEAD_DIMS = (16, 32, 64, 128, 256)
DTYPES = (torch.float16, torch.bfloat16)


def supports(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """The shapes this kernel takes: one query token, grouped heads, a power-of-two head size of 16-256, a boolean mask
    shared by the heads."""
    b, h, q, d = query.shape
    return q == 1 and supports_heads(h, key.shape[1], d, query.dtype, mask, key.shape[-2])


def supports_heads(heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, mask: torch.Tensor | None,
                   positions: int) -> bool:
    """supports() for a one-token query of heads query heads over a cache of kv_heads heads and positions positions."""
    return (available() and heads % kv_heads == 0 and head_dim in HEAD_DIMS and mask is not None
            and mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1
            and mask.shape[-1] >= positions and dtype in DTYPES)


def head_counts(config) -> tuple[int, int]:
    """(query heads, key/value heads) of a transformers text config (as many key/value heads as query heads where it
    names none)."""
    heads = config.num_attention_heads
    return heads, getattr(config, "num_key_value_heads", None) or heads


def runs_for(config, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a model of this transformers config, on device in dtype, has its decode steps' attention here under
    quantkit.eval.attention's "split": grouped-query attention (fewer KV heads than query heads) of a head size this
    kernel takes, on a GPU."""
    config = config.get_text_config()
    heads, kv_heads = head_counts(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (available() and device.type == "cuda" and kv_heads < heads and heads % kv_heads == 0
            and head_dim in HEAD_DIMS and dtype in DTYPES)


def plan(batch: int, kv_heads: int, positions: int, sms: int = 132, per_sm: int | None = None,
         block: int | None = None, rounding: str | None = None) -> tuple[int, int]:
    """(splits, positions a split): as many ranges as bring the programs nearest to per_sm (PROGRAMS_PER_SM) a
    multiprocessor (rounding "nearest"; "up": at least that many; default SPLITS_ROUND), each whole blocks of block
    (BLOCK_S) positions."""
    per_sm, block, rounding = per_sm or PROGRAMS_PER_SM, block or BLOCK_S, rounding or SPLITS_ROUND
    if rounding not in ("up", "nearest"):
        raise ValueError(f"split-KV rounding (QUANTKIT_SPLITS_ROUND) must be up or nearest, got {rounding!r}")
    blocks = math.ceil(positions / block)
    aim = per_sm * sms / (batch * kv_heads)
    splits = max(1, min(blocks, math.ceil(aim) if rounding == "up" else round(aim)))
    chunk = math.ceil(blocks / splits) * block
    return math.ceil(positions / chunk), chunk


def ends_at_last_kept(chunk: int) -> bool:
    """Whether the kernel cuts each sequence's cache up to its last attending position (MASK_BOUND) rather than whole,
    given plan()'s positions a range: where the ranges are more than one block. With one block a range, the scan of
    the mask costs a memory latency before the first block's loads, more than the positions it skips save
    (bench/results/decode_attention_h200_cb5f7b3.json: 10.5 against 9.6 us at batch 1 on the eval's cache)."""
    return MASK_BOUND and chunk > BLOCK_S


def settings() -> dict:
    """The launch settings the kernel reads at every call (what a throughput run records)."""
    return {name: globals()[name] for name in ("PROGRAMS_PER_SM", "BLOCK_S", "NUM_WARPS", "SPLITS_ROUND", "SCAN",
                                               "MASK_BOUND", "PDL", "FUSED_COMBINE")}


if triton is not None:

    @triton.jit
    def _attend(q, keep, k, v, m, l, acc, scale):
        """One block into the running max m, sum l and weighted sum acc of the group's query rows (online softmax)."""
        scores = tl.dot(q, tl.trans(k)) * scale
        scores = tl.where(keep[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, 1))
        base = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing kept yet: no NaN from -inf - -inf
        alpha = tl.exp(m - base)
        w = tl.exp(scores - base[:, None])
        l = l * alpha + tl.sum(w, 1)
        acc = acc * alpha[:, None] + tl.dot(w.to(v.dtype), v)
        return m_new, l, acc

    @triton.jit
    def _tile(o_ptr, lse_ptr, p0, splits, soh, sop, slh, G: tl.constexpr, GN: tl.constexpr, PC: tl.constexpr,
              D: tl.constexpr):
        """The fused combine's ranges p0 to p0 + PC of the group's heads: their log-sum-exps [GN, PC] (-inf past
        splits and G) and sums [GN, PC, D], read through the L2 (.cg: no L1 line that another multiprocessor's stores
        left stale)."""
        g, pc = tl.arange(0, GN), p0 + tl.arange(0, PC)
        inside = (g < G)[:, None] & (pc < splits)[None, :]
        lse = tl.load(lse_ptr + g[:, None] * slh + pc[None, :], mask=inside, other=float("-inf"), cache_modifier=".cg")
        o = tl.load(o_ptr + g[:, None, None] * soh + pc[None, :, None] * sop + tl.arange(0, D)[None, None, :],
                    mask=inside[:, :, None], other=0.0, cache_modifier=".cg")
        return lse, o

    @triton.jit
    def _combine_group(o_ptr, lse_ptr, out_ptr, splits, soh, sop, slh, sxh, G: tl.constexpr, GN: tl.constexpr,
                       PP: tl.constexpr, PC: tl.constexpr, D: tl.constexpr):
        """The fused combine: the G query heads of one KV head together, the arithmetic of _split_kv_combine (each
        head's ranges weighed by exp(lse - its max lse), the weighted sum over the sum of weights; a range that kept
        nothing has lse -inf, weight 0), the sums read PC ranges a tile (bounded whatever the split count). Every
        log-sum-exp and the first tile are loaded together: ceil(splits / PC) reads one after another."""
        g, p, d = tl.arange(0, GN), tl.arange(0, PP), tl.arange(0, D)
        rows = g < G
        every = tl.load(lse_ptr + g[:, None] * slh + p[None, :], mask=rows[:, None] & (p < splits)[None, :],
                        other=float("-inf"), cache_modifier=".cg")
        lse, o = _tile(o_ptr, lse_ptr, 0, splits, soh, sop, slh, G, GN, PC, D)
        top = tl.where(rows, tl.max(every, 1), 0.0)  # each head's max (every head has a range that kept something)
        w = tl.exp(lse - top[:, None])
        l = tl.sum(w, 1)
        acc = tl.sum(o * w[:, :, None], 1)
        for p0 in range(PC, splits, PC):
            lse, o = _tile(o_ptr, lse_ptr, p0, splits, soh, sop, slh, G, GN, PC, D)
            w = tl.exp(lse - top[:, None])
            l += tl.sum(w, 1)
            acc += tl.sum(o * w[:, :, None], 1)
        out = acc / tl.where(rows, l, 1.0)[:, None]
        tl.store(out_ptr + g[:, None] * sxh + d[None, :], out.to(out_ptr.dtype.element_ty), mask=rows[:, None])

    @triton.jit
    def _rotated(x_ptr, d, dp, cos, sin):
        """Rotary embedding of the rows at x_ptr (offsets d; dp: each element's partner in the other half of the head,
        sin already negated for the first half), in fp32, rounded once to x's dtype (as inductor's fused kernel)."""
        x = tl.load(x_ptr + d).to(tl.float32) * cos + tl.load(x_ptr + dp).to(tl.float32) * sin
        return x.to(x_ptr.dtype.element_ty)

    @triton.jit
    def _split_kv_partial(q_ptr, k_ptr, v_ptr, mask_ptr, o_ptr, lse_ptr, out_ptr, count_ptr, scale, positions,
                          sqb, sqh, skb, skh, sks, svb, svh, svs, smb, sms, sob, soh, sop, slb, slh, sxb, sxh,
                          kn_ptr, vn_ptr, cos_ptr, sin_ptr, pos_ptr, sknb, sknh, svnb, svnh, scb, ssb,
                          G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, LSE: tl.constexpr,
                          SCAN: tl.constexpr, MASK_BOUND: tl.constexpr, PDL: tl.constexpr, FUSED: tl.constexpr,
                          GN: tl.constexpr, PP: tl.constexpr, PC: tl.constexpr, ROPE: tl.constexpr):
        """One range's weighted sum of V (fp32) and its log-sum-exp; without LSE (one range a sequence) the attention
        output itself, in o_ptr's dtype. The sequence's positions up to its last attending one are cut into
        as many ranges as there are programs on axis 0, each whole blocks of BS; a range past them keeps nothing.
        FUSED (with LSE): the last of the pair's ranges to store its sums combines them all into out_ptr (count_ptr:
        an arrival counter a (sequence, KV head), zero before the launch and left zero).
        ROPE: q and the step's key (kn_ptr) come before the rotary embedding (cos_ptr, sin_ptr: [B, D] rows), which
        every program applies to them; the step's key and value (vn_ptr) belong at the position at pos_ptr, where the
        first range stores them in the cache and whichever range holds that position attends to them as they are.
        PDL: a programmatic dependent launch, which waits for the kernel before it (what wrote q and the cache) and
        then lets the next one (the combining kernel, or what reads the output) launch."""
        if PDL:
            gdc_wait()
            gdc_launch_dependents()
        p, hk, b = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)  # 64-bit offsets
        g, d = tl.arange(0, GP), tl.arange(0, D)
        heads = hk * G + g  # the query heads of this KV head (GP >= 16 rows for the dot; those past G are zero)
        # q first: its load is in flight during the scan of the mask
        q_ptr = q_ptr + b * sqb + heads[:, None] * sqh
        k_ptr, v_ptr = k_ptr + b * skb + hk * skh, v_ptr + b * svb + hk * svh
        if ROPE:
            dp = (d + D // 2) % D  # rotate_half: the first half takes minus the second, the second the first
            cos = tl.load(cos_ptr + b * scb + d).to(tl.float32)
            sin = tl.load(sin_ptr + b * ssb + d).to(tl.float32)
            sin = tl.where(d < D // 2, -sin, sin)
            q_rows = (g < G)[:, None]
            q = tl.load(q_ptr + d[None, :], mask=q_rows, other=0.0).to(tl.float32) * cos[None, :]
            q += tl.load(q_ptr + dp[None, :], mask=q_rows, other=0.0).to(tl.float32) * sin[None, :]
            q = q.to(q_ptr.dtype.element_ty)
            kn = _rotated(kn_ptr + b * sknb + hk * sknh, d, dp, cos, sin).to(k_ptr.dtype.element_ty)
            vn = tl.load(vn_ptr + b * svnb + hk * svnh + d).to(v_ptr.dtype.element_ty)
            at = tl.load(pos_ptr)
            if p == 0:  # the range that stores them (the range holding the position uses them, not what it loads)
                tl.store(k_ptr + at * sks + d, kn)
                tl.store(v_ptr + at * svs + d, vn)
        else:
            q = tl.load(q_ptr + d[None, :], mask=(g < G)[:, None], other=0.0)
        mask_ptr = mask_ptr + b * smb
        if MASK_BOUND:
            n, last = tl.arange(0, SCAN), tl.full([], -1, tl.int32)
            for s0 in range(0, positions, SCAN):  # one pass at the eval's caches; the loads are independent
                s = s0 + n
                kept = tl.load(mask_ptr + s * sms, mask=s < positions, other=0) != 0
                last = tl.maximum(last, tl.max(tl.where(kept, s, -1), 0))
            filled = last + 1
        else:
            filled = positions
        chunk = tl.cdiv(tl.cdiv(filled, tl.num_programs(0)), BS) * BS
        m = tl.full([GP], float("-inf"), tl.float32)
        l = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, D], tl.float32)
        start = p * chunk
        end = tl.minimum(start + chunk, filled)
        for s0 in range(start, end, BS):
            s = s0 + tl.arange(0, BS)
            inside = s < end
            keep = tl.load(mask_ptr + s * sms, mask=inside, other=0) != 0
            k = tl.load(k_ptr + s[:, None] * sks + d[None, :], mask=inside[:, None], other=0.0)
            v = tl.load(v_ptr + s[:, None] * svs + d[None, :], mask=inside[:, None], other=0.0)
            if ROPE:  # the step's own position: its key and value as computed, whether or not stored yet
                here = (s == at)[:, None]
                k, v = tl.where(here, kn[None, :], k), tl.where(here, vn[None, :], v)
            m, l, acc = _attend(q, keep, k, v, m, l, acc, scale)
        some = l > 0
        lse = tl.where(some, m + tl.log(tl.where(some, l, 1.0)), float("-inf"))  # -inf: the range kept nothing
        out = acc / tl.where(some, l, 1.0)[:, None]
        rows = g < G
        tl.store(o_ptr + b * sob + heads[:, None] * soh + p * sop + d[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=rows[:, None])
        if LSE:
            tl.store(lse_ptr + b * slb + heads * slh + p, lse, mask=rows)
            if FUSED:
                # The block's stores, a barrier, then one thread's acq_rel add at GPU scope: its release (cumulative,
                # so the other threads' stores before the barrier with it) publishes this range to any program whose
                # add comes later, and the adds on a counter are one release sequence, so the last to add (it finds
                # the counter one short of the ranges) acquires every range's sums. Its threads get the add's result
                # through a barrier after the acquire, and read the sums through the L2 (.cg).
                tl.debug_barrier()
                count_ptr = count_ptr + b * tl.num_programs(1) + hk
                arrived = tl.atomic_add(count_ptr, 1, sem="acq_rel", scope="gpu")
                if arrived == tl.num_programs(0) - 1:
                    tl.store(count_ptr, 0)  # every range has added: zero for the next launch (a graph's replay)
                    _combine_group(o_ptr + b * sob + hk * G * soh, lse_ptr + b * slb + hk * G * slh,
                                   out_ptr + b * sxb + hk * G * sxh, tl.num_programs(0), soh, sop, slh, sxh, G, GN, PP,
                                   PC, D)

    @triton.jit
    def _split_kv_combine(o_ptr, lse_ptr, out_ptr, splits, sob, soh, sop, slb, slh, sxb, sxh,
                          PP: tl.constexpr, D: tl.constexpr, PDL: tl.constexpr):
        """The ranges' sums weighed by their log-sum-exps, one query head a program (FUSED_COMBINE off). PDL:
        launched as a programmatic dependent of the ranges' kernel (it waits for their sums here), then lets the next
        kernel launch (only after its own wait: what comes after may read older kernels' outputs waiting for this one
        alone)."""
        if PDL:
            gdc_wait()
            gdc_launch_dependents()
        h, b = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
        p, d = tl.arange(0, PP), tl.arange(0, D)
        lse = tl.load(lse_ptr + b * slb + h * slh + p, mask=p < splits, other=float("-inf"))
        w = tl.exp(lse - tl.max(lse, 0))
        o = tl.load(o_ptr + b * sob + h * soh + p[:, None] * sop + d[None, :], mask=(p < splits)[:, None], other=0.0)
        out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
        tl.store(out_ptr + b * sxb + h * sxh + d, out.to(out_ptr.dtype.element_ty))


_counters: dict = {}  # device -> the fused combine's arrival counters (int32, zero between launches)
_retired: list = []  # counters replaced by larger ones: kept, since a captured graph may still replay into them
COUNTERS_MIN = 1 << 14  # (sequence, KV head) pairs the first allocation covers: batch 2048 at 8 KV heads


def counters(device: torch.device, pairs: int) -> torch.Tensor:
    """At least pairs int32 arrival counters on device, zero (the kernel leaves them so; device_state.kept_zeros)."""
    return device_state.kept_zeros(_counters, _retired, device, pairs, torch.int32, COUNTERS_MIN,
                                   "split-KV decode: arrival counters")


def _launch(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float,
            rope: tuple | None = None) -> torch.Tensor:
    """The kernels of split_kv_decode (rope None) and rope_split_kv_decode (rope: the step's key and value
    [B, H_kv, 1, D], cos and sin [B or 1, 1, D], the position tensor)."""
    b, h, _, d = query.shape
    kv_heads, positions = key.shape[1], key.shape[2]
    sms = torch.cuda.get_device_properties(query.device).multi_processor_count if query.is_cuda else 132
    splits, chunk = plan(b, kv_heads, positions, sms)  # the ranges themselves: worked out by each program
    query = query if query.stride(-1) == 1 else query.contiguous()
    keep = mask.view(torch.uint8)
    out = torch.empty(b, h, 1, d, dtype=query.dtype, device=query.device)
    # one range: the kernel writes out ([B, H, 1, D]: the range index's stride is never used); else the ranges' parts
    parts = out if splits == 1 else torch.empty(b, h, splits, d, dtype=torch.float32, device=query.device)
    lse = torch.empty(b, h, splits, dtype=torch.float32, device=query.device) if splits > 1 else parts
    fused = FUSED_COMBINE and splits > 1
    count = counters(query.device, b * kv_heads) if fused else lse  # not read without FUSED
    if rope is None:
        key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (key, value))
        new_key = new_value = cos = sin = at = query  # not read without ROPE
    else:  # the cache is written in place: its rows must be contiguous (transformers' static caches are)
        if key.stride(-1) != 1 or value.stride(-1) != 1:
            raise ValueError("rope_split_kv_decode: the key and value caches' rows must be contiguous")
        new_key, new_value, cos, sin, at = rope
        new_key, new_value = (t if t.stride(-1) == 1 else t.contiguous() for t in (new_key, new_value))
        cos, sin = (t.expand(b, 1, d) if t.stride(-1) == 1 else t.contiguous().expand(b, 1, d) for t in (cos, sin))
    groups = h // kv_heads
    pdl = pdl_on(query.device)
    launch = {"launch_pdl": True} if pdl else {}
    pp = max(2, triton.next_power_of_2(splits))
    gn = triton.next_power_of_2(groups)
    # the fused combine's ranges a tile: at most 128 fp32 a thread (all of a pair's at batch 1 on the eval's cache)
    pc = min(pp, max(1, 4096 * NUM_WARPS // (gn * d))) if fused else 1
    _split_kv_partial[(splits, kv_heads, b)](
        query, key, value, keep, parts, lse, out, count, scale, positions,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), keep.stride(0), keep.stride(3),
        parts.stride(0), parts.stride(1), parts.stride(2), lse.stride(0), lse.stride(1), out.stride(0), out.stride(1),
        new_key, new_value, cos, sin, at, new_key.stride(0), new_key.stride(1), new_value.stride(0),
        new_value.stride(1), cos.stride(0), sin.stride(0),
        G=groups, GP=max(16, triton.next_power_of_2(groups)), D=d, BS=BLOCK_S, LSE=splits > 1, SCAN=SCAN,
        MASK_BOUND=ends_at_last_kept(chunk), PDL=pdl, FUSED=fused, GN=gn, PP=pp if fused else 2, PC=pc,
        ROPE=rope is not None, num_warps=NUM_WARPS, **launch)
    if splits == 1 or fused:
        return out
    _split_kv_combine[(h, b)](parts, lse, out, splits, parts.stride(0), parts.stride(1), parts.stride(2),
                              lse.stride(0), lse.stride(1), out.stride(0), out.stride(1),
                              PP=pp, D=d, PDL=pdl, **launch)
    return out


@torch.library.custom_op("quantkit::split_kv_decode", mutates_args=())
def split_kv_decode(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """[B, H, 1, D] attention output of the one-token query (see the module doc; ``supports`` must hold)."""
    return _launch(query, key, value, mask, scale)


@split_kv_decode.register_fake
def _(query, key, value, mask, scale):
    return torch.empty_like(query, memory_format=torch.contiguous_format)


@torch.library.custom_op("quantkit::rope_split_kv_decode", mutates_args=("key_cache", "value_cache"))
def rope_split_kv_decode(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, position: torch.Tensor,
                         mask: torch.Tensor, scale: float) -> torch.Tensor:
    """A decode step's rotary embedding, cache write and attention in one launch (attention.ROPE_IN_ATTENTION): query
    [B, H, 1, D] and the step's key [B, H_kv, 1, D] before the rotary embedding (transformers' rotate_half convention:
    cos and sin [B or 1, 1, D]), its value [B, H_kv, 1, D]; the rotated key and the value are written into key_cache
    and value_cache [B, H_kv, S, D] at position (a one-element integer tensor, the same for every sequence), and the
    [B, H, 1, D] attention output of the rotated query over the caches is returned (``supports`` must hold for the
    query and the caches)."""
    return _launch(query, key_cache, value_cache, mask, scale, rope=(key, value, cos, sin, position))


@rope_split_kv_decode.register_fake
def _(query, key, value, cos, sin, key_cache, value_cache, position, mask, scale):
    return torch.empty_like(query, memory_format=torch.contiguous_format)
