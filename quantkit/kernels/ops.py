"""w4a16_linear: one entry point, the path picked by shape and platform.

Paths (backend=):
  "reference"  pure torch (quantkit.kernels.reference), any device.
  "mma"        NVIDIA tensor-core kernel over the "mma" layout, every M.
  "wgmma"      Hopper (sm_90) warpgroup-MMA kernel over the same layout, for prefill sizes.
  "dequant"    the "mma" layout dequantized to [N, K] by a kernel, then cuBLAS (torch.nn.functional.linear).
  "dot2"       the RDNA3 decode kernel of formats.md §2 (M <= 8); on NVIDIA it runs with fp32 FMAs for dot2.
  "wmma"       the RDNA3 prefill kernel of formats.md §2 (gfx11 WMMA), every M, over the same layout as "dot2"; on
               NVIDIA it runs with a stand-in for WMMA (warp shuffles and fp32 FMAs: correct, not fast).
  "kernel"     the best kernel path for this shape (what "auto" picks on a GPU); raises if none can run.
  "auto"       "kernel" when the extension is available and x is on its device, else "reference".
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from quantkit.errors import InputError, UnsupportedError
from quantkit.kernels import build, selfcheck
from quantkit.kernels.packing import SUPPORTED_DTYPES, PackedLinear, mma_chunk_order
from quantkit.kernels.reference import reference_linear, reference_weight

log = logging.getLogger(__name__)

BACKENDS = ("auto", "kernel", "reference", "mma", "wgmma", "dequant", "dot2", "wmma")
# Dispatch on NVIDIA (mma_or_dequant; docs/kernel.md has the measurements behind it): the streaming tensor-core
# kernel up to STREAM_MAX_M rows, then the shared-memory one on wide layers (N >= STAGED_MIN_N, up to
# 2 * MMA_MAX_M rows) or the streaming one on large layers up to MMA_MAX_M, dequantize + cuBLAS otherwise.
STREAM_MAX_M = 32
MMA_MAX_M = 64
STAGED_MIN_N = 12288
# Hopper: the wgmma kernel from STREAM_MAX_M + 1 to WGMMA_MAX_M rows on layers of at least WGMMA_MIN_NK weights
# (up to M = 64, WGMMA_MIN_NK_64); dequantize + cuBLAS elsewhere. Measured on an H100 (bench/results/kernel_h100.json)
# and again on an H200 with split-K through clusters (bench/results/kernel_h200_tune_e967323.json): on 4096x4096 the
# wgmma kernel takes 29.1 us at M = 64 against 31.0 for dequantize + cuBLAS, the same at M = 128, 42.0 against 36.3
# at M = 256.
WGMMA_MAX_M = 256
WGMMA_MIN_NK = 1 << 25
WGMMA_MIN_NK_64 = 1 << 24
# The wgmma kernel's weights and scales through its shared-memory stages with x (cp.async, STAGES - 1 steps ahead)
# instead of one step ahead in registers: measured on an H200 (session 13, bench/results/kernel_h200.json at a743557)
# 10-16% faster at M = 16-64 on the two largest shapes, a few percent on the others, never more than 2% slower.
WGMMA_WSM = True
# The warp-specialized wgmma kernel (csrc/w4a16_wgmma_ws_cuda.h: a producer warp's tensor copies on mbarriers, two
# consumer warpgroups, x packed per call) instead of qk_wgmma_gemm and dequantize + cuBLAS, from STREAM_MAX_M + 1 to
# WS_MAX_M rows (WS_MAX_M_DEEP where K >= WS_DEEP_K) on layers of at least WGMMA_MIN_NK weights. Measured on an H200
# with its copies through tensor maps (bench/results/kernel_h200_ws_tma_fc2e238.json, kernel_h200_mc_d3dd64d.json):
# faster than both from M = 64 to 512 on the four large benchmark layers (28672x8192 at M = 256: 198-211 us against
# 320 for qk_wgmma_gemm; at M = 512: 388-405 against 518 for dequantize + cuBLAS), and at M = 1024 where K >= 8192
# (686-713 against 815-817 us) but not on 14336x4096 (214-225 against 210); at M = 2048 slower on two of the four.
# Up to WS_MAX_M_BIG on layers of at
# least WS_BIG_NK weights with K >= WS_DEEP_K, since its 256-token consumers dequantize during their MMAs (dd3e49e,
# bench/results/kernel_h200_dd3e49e.json): at M = 2048 28672x8192 1336 against 1383 us, 8192x28672 1341 against 1398
# for dequantize + cuBLAS; 4096x14336 still 367 against 350 and 14336x4096 362 against 353. Up to WS_MAX_M_DEEP also
# where K < WS_DEEP_K on layers of at least WS_WIDE_NK weights: Llama-3-8B's gate and up projections as one layer,
# 28672x4096, at M = 1024 355-360 against 413-415 us (bench/results/kernel_h200_prefill_shapes_*.json), where 14336x4096
# (2^25.8 weights) is even (208 against 206) and 6144x4096 slower (113-115 against 96-97); and there where stream-K's
# rule takes the shape (ws_stream_k; 14336x4096 at M = 1024, 448 tiles: 193.2 against 209.8 us, e815c8d). On layers of
# WGMMA_MIN_NK_64 to WGMMA_MIN_NK weights (4096x4096, 6144x4096) from M = 33 while its 256-token tiles fit one wave, up
# to WS_MAX_M_DEEP, with split-K in a cluster (ws_split) or stream-K where its tiles are few (e815c8d,
# bench/results/kernel_h200_e815c8d.json, kernel_h200_prefill_shapes_e815c8d.json: 4096x4096 at M = 64 / 512 / 1024
# 19.9 / 38.7 / 63.5 us against 32.1 / 46.0 / 65.8 for dequantize + cuBLAS; 6144x4096 at M = 512 56.3 against 64.1,
# at M = 1024, 192 tiles, 98.0 with stream-K and 112.9 for the grid against 96.9).
WGMMA_WS = True
WS_MAX_M = 512
WS_MAX_M_DEEP = 1024
WS_WIDE_NK = 1 << 26
WS_DEEP_K = 8192
WS_MAX_M_BIG = 2048
WS_BIG_NK = 1 << 27
# Its tile (wgmma_ws_bt): 256 tokens a block where those blocks fill WS_FILL[0] of the multiprocessors, 128 where they
# fill WS_FILL[1], else 64 (with split-K): from the same run, e.g. 8192x28672 (64 blocks of 128 rows) at M = 256:
# 312 / 226 / 253 us at 256 / 128 / 64 tokens; 14336x4096 (112 blocks) at M = 128: 57 us at 128, 48 at 64.
WS_FILL = (0.8, 0.9)
# Pairs of its blocks along N as one thread-block cluster sharing each x tile (a tensor copy multicast to both, half
# the x a block reads from L2), where it takes no split-K and has an even number of 128-row blocks. Off: slower at
# every tile and layer measured, by 1-34% (median 6%; bench/results/kernel_h200_03c4000.json, the _mc contenders), with
# the empty barriers' arrivals and waits at cluster scope, by a median 1.5x (kernel_h200_mc_d3dd64d.json).
WS_MULTICAST = False
# Stream-K (ws_stream_k): the warp-specialized kernel's blocks persistent, one a multiprocessor, the tiles of whole
# waves given out whole and the steps of the rest cut into runs of equal length, partial tiles added through the
# workspace (csrc/w4a16_wgmma_ws_cuda.h, QkWsWalk, qk_ws_sk_fixup), instead of the grid and its split-K. The tiles after
# whole waves are cut among at most WS_SK_MAX_SPLIT blocks each. Its tile (ws_stream_k_bt): 64 tokens up to M = 64, 128
# up to 128, else 256. First measured on an H200 (bench/results/kernel_h200_sk_f4010c0.json): faster where the grid's
# tiles are few, slower where every tile is cut in two and added up again, and at M >= 1024 on K >= 14336 (8192x28672:
# 834 against 734 us; the blocks no longer read x at the same k at the same time, and x no longer fits in L2). Since
# the tile's first block adds the others' parts in its registers and the parts go whole, 512 contiguous bytes a warp's
# store (e815c8d, bench/results/kernel_h200_e815c8d.json, kernel_h200_prefill_shapes_e815c8d.json), it also wins where
# the grid's last wave leaves a fifth of the multiprocessors idle or more (28672x8192 at M = 256, 224 tiles: 181.7
# against 194.3 us; 14336x4096 at M = 512: 107.5 against 111.6, at M = 1024 193.2 against 208.8 and 209.8 for
# dequantize + cuBLAS; 6144x4096 at M = 512, 96 tiles: 56.3 against 74.3 and 64.1), at 64 and 128 tokens a tenth
# (14336x4096 at M = 128, 112 tiles: 43.5 against 52.2), but not at 256 tokens a seventh (14336x4096 at M = 256: 61.7
# against 58.1). So by rule (not forced) where the tiles fill at most WS_SK_MAX_FILL of the multiprocessors or the
# grid's last wave leaves at least WS_SK_MIN_IDLE of them idle (WS_SK_MIN_IDLE_SMALL below 256 tokens), on layers of
# K > WS_DEEP_K only up to M = WS_SK_MAX_M.
WS_STREAM_K = True
WS_SK_MAX_SPLIT = 4
WS_SK_MAX_M = 512
WS_SK_MAX_FILL = 0.5
WS_SK_MIN_IDLE = 0.2
WS_SK_MIN_IDLE_SMALL = 0.1
# Split-K of the warp-specialized kernel's grid of the smallest tile that holds M (ws_split; 64, 128 or 256 tokens,
# ws_stream_k_bt): its splits of a tile one thread-block cluster, adding their sums through distributed shared memory
# (csrc/w4a16_wgmma_ws_cuda.h, qk_ws_cluster_reduce), where the tiles fill at most half the multiprocessors: as many
# splits as keep the blocks in one wave, at most WS_SPLIT_MAX, each at least MIN_CHUNKS_PER_SPLIT chunks; on layers of
# K > WS_DEEP_K only where the splits' blocks fill WS_FILL[1] of the multiprocessors (else stream-K, which keeps them
# all busy). Ahead of stream-K and of the other tiles. Measured on an H200 with every split count from 2 to 4 beside
# stream-K and dequantize + cuBLAS (bench/results/kernel_h200_c36b4af.json, kernel_h200_prefill_shapes_c36b4af.json;
# at 64 and 128 tokens kernel_h200_e815c8d.json, kernel_h200_prefill_shapes_e815c8d.json): 4096x4096 at M = 256 (32
# tiles) 32.4 us in 3 splits against 37.5 in 2, 48.0 in 4 and 37.1 for dequantize + cuBLAS, at M = 512 39.5 in 2
# against 46.8; at M = 64 / 128 19.9 / 24.6 in 3 against 20.7 / 26.2 for stream-K; 6144x4096 at M = 64 / 128 / 256
# 22.3 / 28.1 / 36.8 in 2 against 24.7 / 30.5 / 41.5; 8192x28672 at M = 64 / 128 / 256 79.6 / 119.7 / 176.7 in 2
# against 82.5 / 123.8 / 184.9; but 4096x14336 (32 tiles, 3 splits: 96 blocks) at M = 64 / 128 / 256 35.9 / 48.8 /
# 68.8 against 33.2 / 44.8 / 65.7 for stream-K. Clusters of 4 were slower everywhere (at most 30 of them run at once
# on the H200, bench/results/kernel_h200_ncu_splits4_e815c8d.txt, so 32 tiles in 4 splits take two waves), and so was
# any split that took a second wave.
WS_SPLIT = True
WS_SPLIT_MAX = 3
# Decode-sized batches on the warp-specialized kernel (ws_decode): 16 tokens a block at M = 9-16 on layers of
# K >= WS_DECODE_MIN_K_16, 32 tokens at M = 17-32 on layers of N K >= WS_DECODE_MIN_NK, always with stream-K; the
# decode kernel (qk_mma_stream) elsewhere at M <= 32. Measured on an H200 (bench/results/kernel_h200_ws16_*.json):
# at M = 16 it takes 8192x28672 from 91 to 66-69 us and 4096x14336 from 33 to 28-29 (the decode kernel's 16-row tiles
# each read all of x, 4 times the weights' bytes at M = 16, which K-long layers do not keep in L1), at M = 32
# 28672x8192 from 91 to 71, 8192x28672 from 96 to 72, 4096x14336 from 31 to 29, 14336x4096 from 34 to 32; it loses
# at M <= 8 everywhere (64-68 against 45-56 us on the largest layers: its consumers, 8 warps a multiprocessor, issue
# an instruction every 4.3 cycles each and stream about 1.9 TB/s whatever the tile), at M = 16 on K <= 8192 and on
# 4096x4096.
WS_DECODE = True
WS_DECODE_MIN_K_16 = 12288
WS_DECODE_MIN_NK = 1 << 25
# 64-k chunks a stage of the warp-specialized kernel holds at 16 / 32 / 64 / 128 / 256 tokens (csrc: qk_ws_ks)
WS_KS = {16: 2, 32: 4, 64: 4, 128: 2, 256: 1}
# its blocks a multiprocessor at 16 tokens (csrc: qk_ws_blocks_per_sm), else 1
WS_BLOCKS_PER_SM = {16: 2}
# Run the pipelined instance at 32 tokens a block (csrc: qk_wgmma_ws's PL; 256 tokens always are): a producer
# warpgroup that hands its registers to the consumers, who dequantize the next step while this step's MMAs run.
# Off: measured 1-7% slower than the plain instance on the H100 at every shape and M = 16 / 32, and the batch-32 decode
# step 3% slower (docs/kernel.md item 47). QUANTKIT_WS_PIPELINED_32=1 turns it on for a process (the eval records it).
WS_PIPELINED_32 = os.environ.get("QUANTKIT_WS_PIPELINED_32", "0") != "0"
# Split-K of the streaming kernel (mma_splits): the largest power of two that keeps the grid within
# STREAM_BLOCKS_PER_SM blocks per multiprocessor (M <= 16, M > 16), each warp getting at least MIN_CHUNKS_PER_SPLIT
# 64-k chunks. Fitted on an H200 to the split-K sweep of bench/results/kernel_h200_splits.md (every power of two from
# 1 to 32 at M = 1-32 on the five benchmark shapes): 2% from the fastest count on geometric mean, 24% at worst
# (8192x28672, M = 16), against 14% and 59% for the rule before it (24 blocks per multiprocessor, not rounded).
STREAM_BLOCKS_PER_SM = (8, 4)
MIN_CHUNKS_PER_SPLIT = 8
# The streaming kernel as a programmatic dependent launch (Hopper and later): its first weight loads overlap the end
# of the kernel before it. Off: no gain in a whole decode step, whose kernels before it are torch's
# (bench/results/decode_profile_h100_pdl_{on,off}.json: 6245 vs 6266 us at batch 1).
STREAM_PDL = False
# A gated pair's SiLU and multiply (w4a16_linear(glu=True), a layer in packing.glu_order) in the decode kernel's
# epilogue where it runs with its warps sharing a tile (True), or always as torch ops after the kernel (False: the
# kernel then writes both halves, as for a plain concatenation of gate and up). QUANTKIT_GLU_EPILOGUE=0 turns it off
# for a process (the eval records it).
GLU_EPILOGUE = os.environ.get("QUANTKIT_GLU_EPILOGUE", "1") != "0"
# The same epilogue in the warp-specialized kernel (batch 32's gate/up, prefill), whose C fragments hold the same rows
# a thread (docs/kernel.md item 54): on one H100 the batch-1 prefill 0.86x -> 0.96x of bf16, the rest within 1.3%
# (eval_llama-3-8b_g128_compiled_ea58d9e_h100_{glu_ws,ws_off}.json). QUANTKIT_GLU_WS=0 turns it off for a process (the
# eval records it). Its cluster split-K is not taken with it (the workspace's instead).
GLU_WS = os.environ.get("QUANTKIT_GLU_WS", "1") != "0"
# A decode step's gated MLP, down(silu(gate(x)) * up(x)), in one launch of the decode kernel (csrc qk_mma_mlp,
# w4a16_mlp) instead of two, at up to MLP_MAX_M rows (one token tile) where the gated pair runs unsplit there: down's
# blocks start on the part of the pair's output they need as soon as it is written, not after the pair's whole grid.
# Off unless QUANTKIT_FUSED_MLP=1 (the eval records it): on the H100 it measured slower, 54.77 -> 57.40 us a layer for
# the four kernels chained at M = 1 and 62.27 -> 65.66 at M = 8, and the compiled batch-1 decode 402.9 -> 370.6 tok/s
# (docs/kernel.md item 59): the programmatic launch of down already overlaps the pair's tail.
FUSED_MLP = os.environ.get("QUANTKIT_FUSED_MLP", "0") == "1"
MLP_MAX_M = 8
# w4a16_linear(warm=...) on the streaming kernel with its warps sharing a tile: the next layer's L2 prefetch from the
# kernel's blocks as they finish (True) or by a launch of its own after the kernel (False)
L2_PREFETCH_IN_KERNEL = True
# With the prefetch from the kernel's blocks: the kernel reads its own weights with an L2 evict-first policy, so that the
# rest of its stream evicts its own lines before the next layer's requested ones (False: the normal priority)
L2_PREFETCH_EVICT_FIRST = False
# The warp-specialized kernel as a programmatic dependent launch of the packing of x, our own kernel just before it,
# which lets it start at once (its blocks set up and request their first STAGES steps' weights and scales while x is
# being packed; they read x only once that kernel has finished): ws_pdl. Measured on an H200 against the same dispatch
# without it, in the same run (bench/results/kernel_h200.json of dc7c6f3, quantkit_nopdl): 1-4 us faster at M =
# 32-512 (4096x4096 at M = 64 / 512 19.7 / 38.8 against 21.3 / 42.7 us; 14336x4096 at M = 32 29.8 against 32.0),
# within 2 us either way from M = 1024 up; but at 16 tokens a block (two blocks a multiprocessor) 4096x14336 at M = 16
# took 37.6 against 29.7 us with it (8192x28672 65.0 against 66.8), for a reason not measured: not there
# (WS_PDL_MIN_BT).
WS_PDL = True
WS_PDL_MIN_BT = 32
# The streaming kernel with the block's 4 warps sharing one tile and taking turns over its chunks ("wk": the block
# reads 4 batches of the tile's consecutive chunks at once, the warps' sums added in shared memory), which needs a
# quarter of the split-K partial sums for the same number of blocks. Measured on an H200: at M = 8-16 up to 13% faster
# on the long-K layers and within 2% either way on the others (bench/results/kernel_h200_variants.json); at M = 17-32,
# with the split rule below, faster on every benchmark shape in two runs (bench/results/kernel_h200_tune_e967323.json,
# kernel_h200_splits.json: 28672x8192 106.6 -> 91.6 us, 4096x4096 16.8 -> 14.9 us, equal at most on the others); at
# M = 1-4, with the split rule and clusters of session 14, faster on every benchmark shape, by 4-17% of the time
# (bench/results/kernel_h200_fs_de194b9.json: 28672x8192 at M = 2 58.7 -> 50.0 us, 14336x4096 at M = 1 19.5 -> 16.6
# us; session 13, before that rule, had measured it equal or up to 5% slower there). stream_wk() is that rule.
STREAM_WK_M = (1, 32)
# Its blocks' warps (csrc QK_STREAM_WARPS), and at one token tile (M <= 8) STREAM_WK_WARPS_ONE_TILE where the L2
# prefetch from its blocks does not run (stream_wk_warps; with the fold too since session 52). Blocks of 8 warps with
# half the split-K parts (mma_splits counts such a block as two) keep as many warps in flight with half the partial
# sums to add; measured on
# an H100, the four kernels of a layer chained at M = 1: 55.25 -> 51.19 us a layer, o_proj alone 7.14 -> 5.57 us and
# q/k/v 8.37 -> 6.79 (bench/results/chain_h100_wk8_0ba3a27.json), and the compiled decode step at batch 1 with them
# 407.9 tok/s, 2.497x the bf16 model's in the same run (eval_llama-3-8b_g128_compiled_wk8_78330be_h100_b1.json;
# session 46's with blocks of 4 on another H100: 401.2, 2.37x); the self-check and the kernels' GPU tests passed with
# them (docs/kernel.md item 63). The default from session 50; QUANTKIT_STREAM_WK_WARPS=4 turns them off for a process
# (the eval records it).
STREAM_WK_WARPS = 4
STREAM_WK_WARPS_ONE_TILE = STREAM_WK_WARPS if os.environ.get("QUANTKIT_STREAM_WK_WARPS", "8") == "4" else 8
# Split-K on Hopper and later: the splits of a tile launched as one thread-block cluster add their sums through
# distributed shared memory (csrc/w4a16_mma_cuda.h, qk_cluster_reduce) instead of fp32 partials in global memory,
# a counter and a last-block pass. CLUSTER_MAX (16) is Hopper's largest cluster. Measured on an H200
# (bench/results/kernel_h200_splits.md): in the wgmma kernel faster at every split count up to 16 where the rule
# splits (4096x4096 at M = 64: 59.9 -> 29.0 us); in the decode kernel faster in clusters of 2 at every M, and of up
# to 8 at M = 17-32 (4096x14336 at M = 32: 37.8 -> 30.2 us), but from 4 or 8 blocks at M <= 16 up to 40% slower on
# some layers (8192x28672 at M = 1 in 8 splits: 49.1 -> 68.8 us), and in clusters of 16 slower nearly everywhere.
# STREAM_CLUSTER_MAX (M <= 16, M > 16) and WGMMA_CLUSTER_MAX are the largest clusters the dispatch launches.
CLUSTER_MAX = 16
STREAM_CLUSTER_MAX = (2, 8)
WGMMA_CLUSTER_MAX = 16
# ROCm: the dot2 decode kernel up to DOT2_MAX_M rows (the most its binding, dot2_gemm, takes), the WMMA kernel above.
# Its split-K (wmma_splits): enough splits that the grid holds WMMA_BLOCKS_PER_CU blocks a compute unit, at most
# WMMA_MAX_SPLITS (each split's sums are added into the 16-bit output, one more rounding each) and at least
# WMMA_MIN_K_PER_SPLIT inputs a split. Not measured: no RDNA3 card has run these kernels (README: measured on NVIDIA,
# compile-checked for RDNA3).
DOT2_MAX_M = 8
WMMA_BLOCKS_PER_CU = 2
WMMA_MAX_SPLITS = 4
WMMA_MIN_K_PER_SPLIT = 512

_buffers: dict = {}


def _sm_count(device: torch.device) -> int:
    key = ("sms", device)
    if key not in _buffers:
        _buffers[key] = torch.cuda.get_device_properties(device).multi_processor_count
    return _buffers[key]


def _capability(device: torch.device) -> tuple[int, int]:
    key = ("cc", device)
    if key not in _buffers:
        _buffers[key] = torch.cuda.get_device_capability(device)
    return _buffers[key]


def _workspace(device: torch.device, floats: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 split-K partial sums (any content) and tile counters (zero, and left zero by the kernel)."""
    ws, counters = _buffers.get(("ws", device), (None, None))
    if ws is None or ws.numel() < floats or counters.numel() < tiles:
        floats = max(floats, 0 if ws is None else ws.numel(), 1 << 20)
        tiles = max(tiles, 0 if counters is None else counters.numel(), 1 << 14)
        ws = torch.zeros(floats, dtype=torch.float32, device=device)
        counters = torch.zeros(tiles, dtype=torch.int32, device=device)
        _buffers[("ws", device)] = (ws, counters)
    return ws, counters


def mma_tiles(m: int) -> int:
    """Token tiles of 8 per block: 1 (M <= 8), 2 (<= 16), 4 (<= 32), else 8 (64 tokens per block)."""
    return 1 if m <= 8 else 2 if m <= 16 else 4 if m <= 32 else 8


def mma_n_per_block(staged: bool, wk: bool = False) -> int:
    """Outputs per block (csrc/w4a16_mma_cuda.h): 8 warps x 2 x 16 staged; streaming, 4 warps x 16, or 16 when the
    warps share their tile (wk)."""
    return 256 if staged else 16 if wk else 64


def stream_wk(m: int) -> bool:
    """Whether the streaming kernel runs with its warps sharing a tile at M rows (STREAM_WK_M, measured on an H200)."""
    return STREAM_WK_M[0] <= m <= STREAM_WK_M[1]


def mma_staged(m: int, n: int) -> bool:
    return m > STREAM_MAX_M and n >= STAGED_MIN_N


def stream_wk_warps(mt: int, wk: bool, plain: bool = True) -> int:
    """The warps of a decode-kernel block: STREAM_WK_WARPS_ONE_TILE at one token tile with the warps sharing a tile
    (wk) where the block does not request an L2 prefetch (plain), else STREAM_WK_WARPS."""
    return STREAM_WK_WARPS_ONE_TILE if wk and mt == 1 and plain else STREAM_WK_WARPS


def mma_splits(m: int, n: int, k: int, sms: int, *, staged: bool, mt: int, wk: bool = False,
               warps: int = STREAM_WK_WARPS) -> int:
    """Split-K count. Streaming: the largest power of two that keeps the grid within STREAM_BLOCKS_PER_SM blocks of
    STREAM_WK_WARPS warps per multiprocessor (a block of warps warps sharing a tile counts as warps / STREAM_WK_WARPS
    of them), each warp at least MIN_CHUNKS_PER_SPLIT chunks. Staged: split only a grid that leaves most SMs idle
    (measured: docs/kernel.md). sms: the GPU's multiprocessor count."""
    blocks = math.ceil(m / (8 * mt)) * math.ceil(n / mma_n_per_block(staged, wk))
    if staged:
        want = math.ceil(sms / blocks) if 2 * blocks < sms else 1
        return max(1, min(want, (k // 64) // MIN_CHUNKS_PER_SPLIT))
    warps = warps if wk else STREAM_WK_WARPS
    want = STREAM_BLOCKS_PER_SM[m > 16] * sms * STREAM_WK_WARPS // (blocks * warps)
    cap = (k // 64) // (MIN_CHUNKS_PER_SPLIT * (warps if wk else 1))
    return 1 << (max(1, min(want, cap)).bit_length() - 1)


def grid_splits(k: int, splits: int) -> int:
    """The split-K count a launch gets for a requested one (as csrc/w4a16_ext.cu computes it): whole chunks per
    split, so 7 requested over 64 chunks is 64 / ceil(64 / 7) = 7 splits of 10 chunks (the last short), 12 over 64
    is 11."""
    chunks = k // 64
    per_split = math.ceil(chunks / max(1, min(splits, chunks)))
    return math.ceil(chunks / per_split)


def cluster_size(splits: int, k: int, device: torch.device, limit: int) -> int:
    """The thread-block cluster for these splits: all of them where there are 2 to limit (at most CLUSTER_MAX) and
    the GPU has clusters (compute capability 9.0+), else 0."""
    z = grid_splits(k, splits)
    if not 1 < z <= min(limit, CLUSTER_MAX):
        return 0
    return z if _capability(device)[0] >= 9 else 0


def _cluster_limit(cluster: bool | None, default: int) -> int:
    return default if cluster is None else CLUSTER_MAX if cluster else 0


class MmaPlan(NamedTuple):
    """The "mma" path's launch (mma_plan): the staged kernel or the decode one, its token tiles, whether its warps
    share a tile (wk), whether its blocks request the L2 prefetch (in_kernel), the warps of a block whose warps share
    a tile, and the split-K count asked for."""
    staged: bool
    mt: int
    wk: bool
    in_kernel: bool
    warps: int
    splits: int


def mma_plan(m: int, n: int, k: int, sms: int, *, splits: int | None = None, mt: int | None = None,
             staged: bool | None = None, wk: bool | None = None, glu: bool = False, prefetch: bool = False,
             fold: bool = False, wk_warps: int | None = None) -> MmaPlan:
    """The "mma" path's launch for M x K by N on a GPU of sms multiprocessors, from w4a16_linear's overrides (None:
    the dispatch's). prefetch: an L2 prefetch follows the layer; fold: the residual add and RMSNorm fold into the
    kernel. Two calls whose plans are equal run the same instance, grid and sums, but for the fold or the prefetch in
    it."""
    staged = mma_staged(m, n) if staged is None else staged
    mt = 8 if staged else (mt or mma_tiles(m))
    if wk and (staged or mt > 4):  # checked here: the extension's own check would be its last line of defence
        raise UnsupportedError(f"wk (warps sharing a tile) is the streaming kernel's, with mt <= 4; got mt={mt}"
                               f"{', staged' if staged else ''}")
    wk = False if staged else (stream_wk(m) and mt <= 4 if wk is None else wk)
    if glu and not wk:
        raise UnsupportedError("glu (the SiLU-and-multiply epilogue) is the decode kernel's with its warps sharing a tile")
    # the decode kernel's blocks request them (not its glu or fold instances: a launch of its own after those)
    in_kernel = prefetch and wk and L2_PREFETCH_IN_KERNEL and not glu and not fold
    if wk_warps is None:
        wk_warps = stream_wk_warps(mt, wk, not in_kernel)
    elif wk_warps != STREAM_WK_WARPS and (wk_warps != 8 or staged or not wk or mt != 1 or in_kernel):
        raise UnsupportedError(f"wk_warps={wk_warps}: 4, or 8 with the decode kernel at one token tile with its warps "
                               f"sharing a tile, without the L2 prefetch from its blocks (M={m})")
    splits = splits or mma_splits(m, n, k, sms, staged=staged, mt=mt, wk=wk, warps=wk_warps)
    return MmaPlan(staged, mt, wk, in_kernel, wk_warps, splits)


def _mma(x2: torch.Tensor, packed: PackedLinear, bias, splits: int | None, mt: int | None,
         staged: bool | None, pdl: bool | None = None, wk: bool | None = None,
         cluster: bool | None = None, warm: tuple[list, list] | None = None, glu: bool = False,
         fold: "Fold | None" = None, wk_warps: int | None = None) -> torch.Tensor:
    """The "mma" path; warm: the L2 prefetch ranges (_prefetch_ranges) requested after it, from the decode kernel's
    blocks where it runs with wk and L2_PREFETCH_IN_KERNEL holds (its own weights then read evict-first where
    L2_PREFETCH_EVICT_FIRST holds), else by the prefetch kernel's launch. glu: the layer is a gated pair in
    packing.glu_order and the decode kernel (with wk) writes silu(gate) * up, [M, N / 2]. fold: the residual add and
    RMSNorm folded into the decode kernel (its operands as [M, ...] rows; not staged); with fold.next_w the result is
    [2, M, N] (the stream, then its next normalization's input). wk_warps: the warps of a decode-kernel block whose
    warps share a tile (default stream_wk_warps; 8 only at one token tile without the prefetch from its blocks)."""
    ext = build.load_extension()
    m, k = x2.shape
    n = packed.out_features
    sms = _sm_count(x2.device)
    staged, mt, wk, in_kernel, wk_warps, splits = mma_plan(m, n, k, sms, splits=splits, mt=mt, staged=staged, wk=wk,
                                                           glu=glu, prefetch=warm is not None, fold=fold is not None,
                                                           wk_warps=wk_warps)
    # a fold's sums of squares (Fold.ss) come from the kernel whose warps share a tile, through the workspace where
    # it splits (the cluster's sums are the same bits), else from torch ops after it
    ss_out = fold is not None and fold.ss is not None and fold.residual is not None
    cl = 0 if staged or (ss_out and wk) else cluster_size(splits, k, x2.device,
                                                           _cluster_limit(cluster, STREAM_CLUSTER_MAX[m > 16]))
    if fold is not None and staged:
        raise UnsupportedError("the residual add and RMSNorm fold into the streaming kernel, not the staged one")
    pair = fold is not None and fold.next_w is not None
    full = torch.empty(2 if pair else 1, m, n // 2 if glu else n, dtype=x2.dtype, device=x2.device)
    out = full[0]
    tiles = math.ceil(m / (8 * mt)) * math.ceil(n / mma_n_per_block(staged, wk))
    ws, counters = _workspace(x2.device, splits * m * n if splits > 1 and not cl else 0, tiles)
    rms, eps, residual, next_w, g, ss = (fold.operands(full) if fold is not None
                                         else (None, 0.0, None, None, None, None))
    tensors, sizes = warm if in_kernel else ([], [])
    ext.mma_gemm(x2, packed.mma_weight, packed.mma_meta(x2.dtype), bias, out, ws, counters, packed.group_size,
                 packed.zeros is None, mt, splits, staged, STREAM_PDL if pdl is None else pdl, wk, cl, tensors, sizes,
                 in_kernel and L2_PREFETCH_EVICT_FIRST, glu, rms, eps, residual, next_w, g, wk_warps,
                 None if ss_out and not wk else ss)
    if ss_out and not wk:
        ss.copy_(sum_squares(out))
    if warm is not None and not in_kernel:
        ext.l2_prefetch(*warm)
    return full if pair else out


def wgmma_bt(m: int, n: int) -> int:
    """Tokens per block of the wgmma kernel (its MMA's N: 64, 128 or 256), as measured fastest on an H100 and an H200
    (with the two-blocks-per-multiprocessor instance, which the automatic path uses; on the H200 64 tokens also on
    layers of N < 8192 at M = 256: 4096x14336 101.0 us against 120.2 with 128)."""
    if m <= 64 or (m <= 128 and n < 16384) or n < 8192:
        return 64
    return 128


def wgmma_splits(m: int, n: int, k: int, sms: int, bt: int) -> int:
    """Split-K for the wgmma kernel on a GPU of sms multiprocessors: only when the grid leaves multiprocessors idle."""
    blocks = math.ceil(m / bt) * math.ceil(n / 128)
    if blocks >= sms:
        return 1
    return max(1, min(math.ceil(sms / blocks), (k // 64) // MIN_CHUNKS_PER_SPLIT))


def wgmma_ws_bt(m: int, n: int, sms: int) -> int:
    """Tokens per block of the warp-specialized wgmma kernel (64, 128 or 256; WS_FILL) on a GPU of sms
    multiprocessors."""
    row_blocks = math.ceil(n / 128)
    if m > 128 and math.ceil(m / 256) * row_blocks >= WS_FILL[0] * sms:
        return 256
    if m > 64 and math.ceil(m / 128) * row_blocks >= WS_FILL[1] * sms:
        return 128
    return 64


def ws_split(m: int, n: int, k: int, sms: int) -> int:
    """Splits of the warp-specialized kernel's grid of ws_stream_k_bt(m) tokens a block, each split's blocks one
    cluster (WS_SPLIT), on a GPU of sms multiprocessors; 1: none."""
    if not WS_SPLIT or m <= STREAM_MAX_M:
        return 1
    tiles = math.ceil(m / ws_stream_k_bt(m)) * math.ceil(n / 128)
    if 2 * tiles > sms:
        return 1
    splits = min(WS_SPLIT_MAX, sms // tiles)
    while splits > 1 and (k // 64) // splits < MIN_CHUNKS_PER_SPLIT:
        splits -= 1
    if k > WS_DEEP_K and splits * tiles < WS_FILL[1] * sms:
        return 1
    return splits


def ws_stream_k_bt(m: int) -> int:
    """Tokens per block of the warp-specialized kernel under stream-K (WS_STREAM_K; 16 and 32: ws_decode)."""
    return 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128 if m <= 128 else 256


def ws_pdl(bt: int) -> bool:
    """Whether the warp-specialized kernel at bt tokens a block is launched as a programmatic dependent of the packing
    of x (WS_PDL, WS_PDL_MIN_BT)."""
    return WS_PDL and bt >= WS_PDL_MIN_BT


def ws_decode(m: int, n: int, k: int) -> bool:
    """Whether a decode-sized batch (M <= 32) runs the warp-specialized kernel rather than the decode kernel
    (WS_DECODE)."""
    if not (WS_DECODE and WGMMA_WS and WS_STREAM_K and STREAM_MAX_M >= m > 8):
        return False
    return k >= WS_DECODE_MIN_K_16 if m <= 16 else n * k >= WS_DECODE_MIN_NK


def ws_stream_k(m: int, n: int, k: int, sms: int, bt: int, *, force: bool = False) -> tuple[int, int]:
    """(persistent blocks, blocks sharing what is left after whole waves) for the warp-specialized kernel's stream-K at
    this shape and tile on a GPU of sms multiprocessors (WS_BLOCKS_PER_SM blocks each), or (0, 0): by rule, where the
    tiles fill at most WS_SK_MAX_FILL of the multiprocessors or leave at least WS_SK_MIN_IDLE (WS_SK_MIN_IDLE_SMALL
    below 256 tokens) of the grid's last wave idle, on layers of K > WS_DEEP_K up to M = WS_SK_MAX_M; forced, wherever
    every block gets a step and whole waves do not already fill them all."""
    tiles = math.ceil(m / bt) * math.ceil(n / 128)
    steps = math.ceil((k // 64) / WS_KS[bt])
    sms *= WS_BLOCKS_PER_SM.get(bt, 1)  # the blocks that run at once
    ctas = min(sms, tiles * WS_SK_MAX_SPLIT)
    left = tiles % ctas  # the tiles after whole waves of ctas
    blocks = min(ctas, left * WS_SK_MAX_SPLIT)
    if not left or left * steps < blocks:
        return 0, 0
    few, idle = tiles <= WS_SK_MAX_FILL * sms, math.ceil(tiles / sms) - tiles / sms
    rule = (few or idle >= (WS_SK_MIN_IDLE if bt >= 256 else WS_SK_MIN_IDLE_SMALL)) and (m <= WS_SK_MAX_M or
                                                                                        k <= WS_DEEP_K)
    return (ctas, blocks) if force or rule else (0, 0)


def ws_plan(m: int, n: int, k: int, sms: int, bt: int | None = None, stream_k: bool | None = None
            ) -> tuple[int, int, int, int]:
    """(tokens a block, persistent blocks, blocks sharing the last wave, splits) of the warp-specialized kernel: the
    cluster split-K of the grid of the smallest tile that holds M (ws_split; stream_k None and bt None or that tile),
    else stream-K's (stream_k None: WS_STREAM_K's rule; True: wherever it can run) or, where it does not run, the
    grid's tile (wgmma_ws_bt) and (0, 0, 1). bt: the tile, else the rule's."""
    if stream_k is None and bt in (None, ws_stream_k_bt(m)) and (splits := ws_split(m, n, k, sms)) > 1:
        return ws_stream_k_bt(m), 0, 0, splits
    if WS_STREAM_K if stream_k is None else stream_k:
        sk_bt = bt or ws_stream_k_bt(m)
        # 16 and 32 tokens (ws_decode) were measured with stream-K wherever it can run
        ctas, blocks = ws_stream_k(m, n, k, sms, sk_bt, force=bool(stream_k) or sk_bt < 64)
        if ctas:
            return sk_bt, ctas, blocks, 1
    return bt or wgmma_ws_bt(m, n, sms), 0, 0, 1


def ws_multicast_fits(n: int, k: int, splits: int) -> bool:
    """Whether the warp-specialized kernel's blocks can share x in pairs (WS_MULTICAST): no split-K and an even number
    of 128-row blocks."""
    return grid_splits(k, splits) == 1 and math.ceil(n / 128) % 2 == 0


def wgmma_ws(m: int, n: int, k: int, sms: int = 132) -> bool:
    """Whether the wgmma path runs the warp-specialized kernel for this shape on a GPU of sms multiprocessors
    (WGMMA_WS, WGMMA_MIN_NK: WS_MAX_M, or WS_MAX_M_DEEP where K < WS_DEEP_K on layers of WS_WIDE_NK weights or where
    stream-K's rule takes the shape, WS_MAX_M_DEEP or WS_MAX_M_BIG where K >= WS_DEEP_K; layers of WGMMA_MIN_NK_64
    weights: while the 256-token tiles fit one wave, up to WS_MAX_M_DEEP; at M <= 32, ws_decode)."""
    if not WGMMA_WS:
        return False
    if m <= STREAM_MAX_M:
        return ws_decode(m, n, k)
    if n * k >= WGMMA_MIN_NK:
        if k < WS_DEEP_K:
            if m <= WS_MAX_M:
                return True
            return m <= WS_MAX_M_DEEP and (n * k >= WS_WIDE_NK or ws_stream_k(m, n, k, sms, 256)[0] > 0)
        return m <= (WS_MAX_M_BIG if n * k >= WS_BIG_NK else WS_MAX_M_DEEP)
    if n * k < WGMMA_MIN_NK_64:
        return False
    return m <= WS_MAX_M_DEEP and math.ceil(m / 256) * math.ceil(n / 128) <= sms


def _wgmma(x2: torch.Tensor, packed: PackedLinear, bias, splits: int | None, bt: int | None,
           dense: bool | None = None, wsm: bool | None = None, cluster: bool | None = None,
           ws: bool | None = None, multicast: bool | None = None, stream_k: bool | None = None,
           pdl: bool | None = None, image: bool = False, probe: int = 0, pipelined: bool | None = None,
           glu: bool = False) -> torch.Tensor:
    """x2 [M, K] as the caller has it (contiguous): gathered into the MMA's k order (qk_wgmma_gemm), or packed into the
    image of the swizzled tiles (ws, qk_wgmma_ws), here; image: x2 is that image already (x_image; ws only).
    stream_k (ws only): None, WS_STREAM_K's rule; True, stream-K wherever every block gets work (else the grid);
    False, the grid. probe (ws only): ws_probe's level, else 0. pipelined (ws at 32 tokens a block only): the pipelined
    instance (None: WS_PIPELINED_32). glu (ws only): the layer is a gated pair in packing.glu_order and the kernel
    writes silu(gate) * up, [M, N / 2] (its split-K through the workspace, not a cluster; not the pipelined
    instance)."""
    ext = build.load_extension()
    m, k = x2.shape
    n = packed.out_features
    sms = _sm_count(x2.device)
    ws = wgmma_ws(m, n, k, sms) if ws is None else ws
    if image and not ws:
        raise UnsupportedError("an image of x is read by the warp-specialized kernel only")
    if glu and (not ws or probe or pipelined or cluster):
        raise UnsupportedError("glu (the SiLU-and-multiply epilogue) is the warp-specialized kernel's, without a "
                               "probe, the pipelined instance or a cluster")
    sk = sk_blocks = depth = 0  # stream-K's persistent blocks, those sharing the last wave, workspace depth; 0: grid
    if stream_k and (splits or cluster or multicast):
        raise UnsupportedError("stream-K takes no split-K, cluster or multicast")
    if ws and not (splits or cluster or multicast):
        plan_bt, sk, sk_blocks, plan_splits = ws_plan(m, n, k, sms, bt, stream_k)
        depth = ext.wgmma_ws_stream_k_depth(m, n, k, plan_bt, sk, sk_blocks) if sk else 0
        sk, bt = (sk, plan_bt) if depth else (0, bt)  # 0: some run would be empty, the grid instead
        if plan_splits > 1:
            bt, splits = plan_bt, plan_splits
    bt = bt or (wgmma_ws_bt(m, n, sms) if ws else wgmma_bt(m, n))
    if pipelined and not (ws and bt == 32):
        raise UnsupportedError(f"the pipelined instance is the warp-specialized kernel's at 32 tokens a block (256 "
                               f"always is); got {'bt ' + str(bt) if ws else 'the wgmma kernel'}")
    pl = ws and bt == 32 and not glu and (WS_PIPELINED_32 if pipelined is None else pipelined)
    if ws and bt == 256 and not sk:
        splits = splits or 1
    splits = 1 if sk else splits or wgmma_splits(m, n, k, sms, bt)
    cl = 0 if sk or glu else cluster_size(splits, k, x2.device, _cluster_limit(cluster, WGMMA_CLUSTER_MAX))
    mc = 1
    if ws and not sk:
        can = ws_multicast_fits(n, k, splits)
        if multicast and not can:
            raise UnsupportedError(f"multicast needs no split-K and an even number of 128-row blocks; got "
                                   f"{grid_splits(k, splits)} splits and {math.ceil(n / 128)} blocks")
        mc = 2 if can and (WS_MULTICAST if multicast is None else multicast) else 1
    out = torch.empty(m, n // 2 if glu else n, dtype=x2.dtype, device=x2.device)
    tiles = math.ceil(m / bt) * math.ceil(n / 128)
    depth = depth if depth > 1 else splits if splits > 1 and not cl else 0
    # stream-K's parts are whole tiles in fragment order (qk_ws_part_store); split-K's are [M, N]
    part, counters = _workspace(x2.device, depth * (tiles * bt * 128 if sk else m * n), tiles)
    meta = packed.mma_meta(x2.dtype)
    if ws:
        xp = x2
        if not image:
            xp = torch.empty_like(x2)
            # x2 is 16-byte aligned (w4a16_linear): without act-order the packing reads it 16 bytes at a time, no index
            index, words = packed.wgmma_x_pack_index() if packed.perm is not None else (None, True)
            ext.wgmma_pack_x(x2, index, words, xp)
        ext.wgmma_ws_gemm(xp, packed.mma_weight, meta, bias, out, part, counters, packed.group_size,
                          packed.zeros is None, bt, splits, cl, mc, sk, sk_blocks, ws_pdl(bt) if pdl is None else pdl,
                          probe, pl, glu)
        return out
    xw = x2.index_select(1, packed.wgmma_x_index())  # act-order and the MMA's k order inside each chunk, one gather
    dense = (True if dense is None else dense) and bt <= 128
    ext.wgmma_gemm(xw, packed.mma_weight, meta, bias, out, part, counters, packed.group_size,
                   packed.zeros is None, bt, splits, dense, WGMMA_WSM if wsm is None else wsm, cl)
    return out


def ws_probe(x: torch.Tensor, packed: PackedLinear, level: int, bt: int | None = None,
             stream_k: bool | None = None) -> torch.Tensor:
    """A diagnostic for benchmarks (bench/kernel_bench.py --ws-probe): the warp-specialized kernel, launched as
    w4a16_linear(x, packed, backend="wgmma", ws=True, bt=bt, stream_k=stream_k) would launch it, but with consumers
    that only wait for each stage of the ring (level 2: and read their weights and scales from it; 3: and dequantize
    them) and give it back: how fast the kernel streams the layer without its MMAs (3), also without the
    dequantization (2), or with its producer alone (1); level 4: as 1, the producer copying no x (its ring of weights
    and scales alone: what the copies of x cost it). At 16 or 32 tokens a block (the tiles with probe instances,
    none of whose code the kernel's own instances hold). The result is not the product (zeros)."""
    if level not in (1, 2, 3, 4):
        raise InputError(f"probe level must be 1, 2, 3 or 4, got {level}")
    _check_inputs(x, packed, None, "wgmma")  # w4a16_linear's own checks, as for backend="wgmma"
    _check_forced("wgmma", packed, x)
    m, k = math.prod(x.shape[:-1]), x.shape[-1]
    x2, _ = _operands(x.reshape(m, k).contiguous(), None)
    return _wgmma(x2, packed, None, None, bt, ws=True, stream_k=stream_k, probe=level)


def x_image(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] (K a multiple of 64) -> [K / 64, M, 64]: what the warp-specialized kernel's packing of x writes for
    a layer without act-order (the extension's wgmma_pack_x, no index), row r of chunk c that chunk of x in
    the MMA's k order (PackedLinear.wgmma_x_index) with its 16-byte unit u stored at u ^ (r % 8). In torch ops, so
    that torch.compile fuses it into the kernel that makes x; w4a16_linear_image reads it."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    y = mma_chunk_order(x2).reshape(m, k // 64, 8, 8)  # each chunk's 8 16-byte units of the MMA's order
    r = torch.arange(m, device=x.device)
    v = torch.arange(8, device=x.device)[None, :] ^ (r[:, None] % 8)  # [M, 8]: the unit stored at unit v of row r
    image = torch.gather(y, 2, v[:, None, :, None].expand(m, k // 64, 8, 8))
    return image.transpose(0, 1).reshape(k // 64, m, 64).contiguous()


def x_image_ready(packed: PackedLinear) -> bool:
    """Whether w4a16_linear_image can run this layer at the M where wgmma_ws holds: no act-order, the "mma" layout on
    a Hopper GPU, the extension built."""
    return packed.perm is None and _mma_on_nvidia(packed) and has_wgmma(packed.device)


def _mma_on_nvidia(packed: PackedLinear) -> bool:
    """The layer has the "mma" layout on an NVIDIA GPU and the extension is built."""
    return (not packed.kernel_reason and packed.mma_weight is not None and packed.device.type == "cuda"
            and not torch.version.hip and build.kernel_available()[0])


def sm_count(device: torch.device) -> int:
    """The multiprocessors of a GPU (the dispatch rules' sms)."""
    return _sm_count(device)


def w4a16_linear_image(image: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None = None, *,
                       glu: bool = False) -> torch.Tensor:
    """y [M, N] = x W^T (+ bias) from image = x_image(x) [K / 64, M, 64]: the warp-specialized kernel without its own
    packing of x, for a layer where x_image_ready holds at an M where wgmma_ws does (what w4a16_linear runs there). A
    torch.compile'd step makes the image in the kernel that makes x (quantkit.eval.throughput). glu: the layer is a
    gated pair and the kernel's epilogue gives silu(gate) * up, [M, N / 2] (GLU_WS; the caller checks it)."""
    if image.dim() != 3 or image.shape[2] != 64:
        raise InputError(f"an image of x is [K / 64, M, 64], got {tuple(image.shape)}")
    chunks, m, _ = image.shape
    k = 64 * chunks
    _check_inputs(image.reshape(m, k), packed, bias, "kernel")  # (dtype and K: the shape is checked above)
    if not x_image_ready(packed) or not _on_layer_device(image, packed):
        raise UnsupportedError(f"no image of x for this layer on {image.device}: it needs a Hopper GPU, the layer on "
                               f"it and no act-order (else w4a16_linear)")
    if not wgmma_ws(m, packed.out_features, k, _sm_count(image.device)):
        raise UnsupportedError(f"{m} rows of a {packed.out_features}x{k} layer do not run the warp-specialized "
                               f"kernel; use w4a16_linear")
    selfcheck.self_check(image.device)
    image, b = _operands(image.contiguous(), bias)
    return _wgmma(image.view(m, k), packed, b, None, None, image=True, glu=glu)  # the kernel reads its bytes as the image


def l2_prefetch_ready(packed: PackedLinear) -> bool:
    """Whether l2_prefetch can warm the L2 with this layer: its "mma" layout on an NVIDIA GPU, the extension built."""
    return _mma_on_nvidia(packed)


def _prefetch_ranges(packed: PackedLinear, dtype: torch.dtype, max_bytes: int | None) -> tuple[list, list]:
    """The tensors and byte counts of l2_prefetch: the layer's packed scales for ``dtype``, whole, and the first
    max_bytes (None: all, rounded down to 16) of its packed weights."""
    meta, w = packed.mma_meta(dtype), packed.mma_weight
    w_bytes = w.numel() * w.element_size()
    if max_bytes is not None:
        w_bytes = min(w_bytes, max(0, max_bytes) // 16 * 16)
    return [meta, w], [meta.numel() * meta.element_size(), w_bytes]


def l2_prefetch(packed: PackedLinear, dtype: torch.dtype, max_bytes: int | None = None) -> int:
    """Request the layer's packed scales (for activations of ``dtype``) and the first ``max_bytes`` (None: all) of its
    packed weights into the GPU's L2 cache, on the current stream, and return at once: the copies complete after the
    call, during whatever the stream runs next. Nothing is written. Returns the bytes requested (0 where
    l2_prefetch_ready does not hold). The weights' first bytes are their first 16-row tiles, which the kernels'
    first blocks read. w4a16_linear(warm=...) does the same from the decode kernel's own blocks as they finish."""
    if not l2_prefetch_ready(packed):
        return 0
    tensors, sizes = _prefetch_ranges(packed, dtype, max_bytes)
    build.load_extension().l2_prefetch(tensors, sizes)
    return sum(sizes)


def has_wgmma(device: torch.device) -> bool:
    """The wgmma kernel exists in this build and this GPU is a Hopper part (compute capability 9.0)."""
    key = ("wgmma", device)
    if key not in _buffers:
        ext = build.load_extension()
        _buffers[key] = (ext is not None and hasattr(ext, "wgmma_gemm") and not torch.version.hip
                         and _capability(device) == (9, 0))
    return _buffers[key]


def dequantize_weight(packed: PackedLinear, dtype: torch.dtype) -> torch.Tensor:
    """The [N, K] weight (act-order sorted) from the mma layout, by the dequantize kernel."""
    ext = build.load_extension()
    w = torch.empty(packed.out_features, packed.in_features, dtype=dtype, device=packed.mma_weight.device)
    ext.mma_dequant(packed.mma_weight, packed.mma_meta(dtype), w, packed.group_size, packed.zeros is None)
    return w


def _dot2_layout_gemm(kernel, x2: torch.Tensor, packed: PackedLinear, bias, k_split: int) -> torch.Tensor:
    """A kernel over the "dot2" layout (the extension's dot2_gemm or wmma_gemm) with K cut into pieces of k_split:
    each piece's sums are added into out, which therefore starts at zero when there is more than one."""
    m, k = x2.shape
    alloc = torch.zeros if k > k_split else torch.empty
    out = alloc(m, packed.out_features, dtype=x2.dtype, device=x2.device)
    kernel(x2, packed.dot2_qweight, packed.dot2_scales(x2.dtype), packed.zeros, bias, out, packed.group_size, k_split)
    return out


def dot2_k_split(group_size: int) -> int:
    """The dot2 decode kernel's k_split: the most whole groups in its 256 staged inputs (QK_DOT2_KSPLIT)."""
    if group_size > 256:
        raise UnsupportedError(f"the dot2 decode kernel takes group sizes up to 256, this layer has {group_size}")
    return 256 // group_size * group_size


def _dot2(x2: torch.Tensor, packed: PackedLinear, bias) -> torch.Tensor:
    m = x2.shape[0]
    if m > DOT2_MAX_M:
        raise UnsupportedError(f"the dot2 decode kernel takes M <= {DOT2_MAX_M} rows, x has {m}; use backend='kernel'")
    return _dot2_layout_gemm(build.load_extension().dot2_gemm, x2, packed, bias, dot2_k_split(packed.group_size))


def wmma_splits(m: int, n: int, k: int, group_size: int, cus: int, splits: int | None = None) -> int:
    """The WMMA kernel's k_split (a multiple of the group size) for splits pieces of K, by default see
    WMMA_BLOCKS_PER_CU."""
    if not splits:
        blocks = -(-n // 64) * -(-m // 32)
        splits = max(1, min(WMMA_MAX_SPLITS, WMMA_BLOCKS_PER_CU * cus // blocks, k // WMMA_MIN_K_PER_SPLIT))
    return -(-k // splits // group_size) * group_size


def _wmma(x2: torch.Tensor, packed: PackedLinear, bias, splits: int | None) -> torch.Tensor:
    m, k = x2.shape
    k_split = wmma_splits(m, packed.out_features, k, packed.group_size, _sm_count(x2.device), splits)
    return _dot2_layout_gemm(build.load_extension().wmma_gemm, x2, packed, bias, k_split)


def _check_inputs(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, backend: str) -> None:
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise InputError(f"x is {x.dtype}; w4a16_linear takes float16 or bfloat16 activations")
    if x.shape[-1] != packed.in_features:
        raise InputError(f"x has {x.shape[-1]} features in its last dimension, the layer takes {packed.in_features}")
    if bias is not None and tuple(bias.shape) != (packed.out_features,):
        raise InputError(f"bias must have shape [{packed.out_features}], got {tuple(bias.shape)}")


def _check_forced(backend: str, packed: PackedLinear, x: torch.Tensor) -> None:
    ok, reason = build.kernel_available()
    reason = packed.kernel_reason or reason
    if not reason and (x.device.type != "cuda" or packed.device.type != "cuda"):
        reason = f"x is on {x.device}, the packed layer on {packed.device}"
    if not reason and backend in ("mma", "wgmma", "dequant") and packed.mma_weight is None:
        reason = "the layer was prepared without the 'mma' layout (prepare(..., layouts=('mma',)))"
    if not reason and backend == "wgmma" and not has_wgmma(x.device):
        reason = f"the wgmma kernel needs a Hopper GPU (compute capability 9.0), {x.device} is not one"
    if not reason and backend in ("dot2", "wmma") and packed.dot2_qweight is None:
        reason = "the layer was prepared without the 'dot2' layout (prepare(..., layouts=('dot2',)))"
    if reason:
        raise UnsupportedError(f"backend {backend!r} cannot run: {reason}")


def _on_layer_device(x: torch.Tensor, packed: PackedLinear) -> bool:
    """x is on a GPU and on the packed layer's (a layer on "cuda", no index, takes any of them)."""
    return (x.device.type == "cuda" and packed.device.type == "cuda"
            and packed.device.index in (None, x.device.index))


def _operands(x2: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x2 (contiguous) 16-byte aligned, as the kernels read it, and the bias in x2's dtype."""
    if x2.data_ptr() % 16:
        x2 = x2.clone()
    return x2, None if bias is None else bias.to(x2.dtype).contiguous()


def kernel_path(m: int, packed: PackedLinear, x: torch.Tensor) -> tuple[str, str]:
    """(path, "") for the kernel path this shape takes, or ("", why no kernel can run it)."""
    if packed.kernel_reason:
        return "", packed.kernel_reason
    ok, reason = build.kernel_available()
    if not ok:
        return "", reason
    if not _on_layer_device(x, packed):
        return "", f"x is on {x.device}, the packed layer on {packed.device}"
    if torch.version.hip:
        if packed.dot2_qweight is None:
            return "", "the layer was prepared without the 'dot2' layout"
        return ("dot2" if m <= DOT2_MAX_M else "wmma"), ""
    if packed.mma_weight is None:
        return "", "the layer was prepared without the 'mma' layout"
    return mma_or_dequant(m, packed.out_features, packed.in_features, wgmma=has_wgmma(x.device),
                          sms=_sm_count(x.device)), ""


@dataclass(frozen=True)
class Fold:
    """A decoder layer's residual add and RMSNorm folded into a linear (w4a16_linear's rms / residual / next_w), its
    operands as rows [M, ...]: rms [M, K] the stream h whose RMSNorm x is, x being round(h * norm weight): each row's
    product is scaled by rsqrt(mean(h^2) + eps) before the bias; residual [M, N]: the result is round(residual +
    round(y)); next_w [N]: with it also round(result * next_w), the next RMSNorm's input before its scale.
    ss, fp32, contiguous, between two folded linears (a decoder layer's o_proj and gate/up): with residual [M, N / 16],
    filled with each row's sums of squares of the result over each 16 features (sum_squares: by the decode kernel
    where it writes the result, else in torch ops); with rms [M, K / 16], those sums of rms, which the decode kernel
    adds up instead of reading rms's row where it can (csrc QkSumSq); the reference reads rms."""
    rms: torch.Tensor | None = None
    eps: float = 0.0
    residual: torch.Tensor | None = None
    next_w: torch.Tensor | None = None
    ss: torch.Tensor | None = None

    def rows(self, m: int, k: int, n: int) -> "Fold":
        """The same with its tensors as rows, contiguous: rms [m, k], residual [m, n] (from x's leading shape); ss
        [m, ...] a view (filled in place)."""
        return Fold(None if self.rms is None else self.rms.reshape(m, k).contiguous(), self.eps,
                    None if self.residual is None else self.residual.reshape(m, n).contiguous(),
                    None if self.next_w is None else self.next_w.contiguous(),
                    None if self.ss is None else self.ss.view(m, self.ss.shape[-1]))

    def operands(self, full: torch.Tensor) -> tuple:
        """The extension's (rms, eps, residual, next_w, g, ss) for the result full ([2, M, N] with next_w: g is
        full[1])."""
        return (self.rms, float(self.eps), self.residual, self.next_w, full[1] if self.next_w is not None else None,
                self.ss)


def sum_squares(h: torch.Tensor) -> torch.Tensor:
    """Each row's sums of squares of h [..., N] over each 16 features, fp32: [..., N / 16] (Fold.ss)."""
    return h.float().pow(2).unflatten(-1, (h.shape[-1] // 16, 16)).sum(-1)


def rms_scale(h: torch.Tensor, eps: float) -> torch.Tensor:
    """rsqrt(mean(h^2) + eps) over h's last dimension, fp32, keeping it (an RMSNorm's scale, as transformers'
    LlamaRMSNorm computes it)."""
    return torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + eps)


def add_residual(y: torch.Tensor, residual: torch.Tensor, next_w: torch.Tensor | None) -> torch.Tensor:
    """residual + y in their 16-bit dtype (one rounding); with next_w, stacked with that times next_w: [2, ..., N]."""
    h = residual + y.to(residual.dtype)
    return h if next_w is None else torch.stack([h, h * next_w])


def _scaled_after(rows: torch.Tensor, bias: torch.Tensor | None, glu: bool, fold: Fold, dtype: torch.dtype
                  ) -> torch.Tensor:
    """A fold's RMSNorm scale (fold.rms) applied in torch ops to a linear's own rows [M, N] (fp32 or 16-bit, no bias,
    before a gated pair's SiLU and multiply), then the bias and the pair's SiLU and multiply, rounded once to dtype;
    then the rest of the fold (_added_after)."""
    y = rows.float() * rms_scale(fold.rms, fold.eps)
    if bias is not None:
        y = y + bias.float()
    return _added_after((glu_interleaved(y) if glu else y).to(dtype), fold)


def _added_after(y: torch.Tensor, fold: Fold) -> torch.Tensor:
    """A fold's residual add (and next_w, and ss) applied in torch ops to a linear's output y, where the kernel that
    ran cannot fold it, and the reference's."""
    if fold.residual is None:
        return y
    out = add_residual(y, fold.residual, fold.next_w)
    if fold.ss is not None:
        fold.ss.copy_(sum_squares(out if fold.next_w is None else out[0]))
    return out


def _check_fold(fold: Fold, x: torch.Tensor, n_out: int, glu: bool) -> None:
    rows = x.shape[:-1]
    if fold.rms is not None and (fold.rms.shape != x.shape or fold.rms.dtype != x.dtype):
        raise InputError(f"rms must be x's shape {tuple(x.shape)} and dtype, got {tuple(fold.rms.shape)} "
                         f"{fold.rms.dtype}")
    if fold.residual is not None:
        if glu:
            raise InputError("residual is not for a gated pair (glu): its output is the MLP's inside")
        if fold.residual.shape != (*rows, n_out) or fold.residual.dtype != x.dtype:
            raise InputError(f"residual must be {(*rows, n_out)} in x's dtype, got {tuple(fold.residual.shape)} "
                             f"{fold.residual.dtype}")
    if fold.next_w is not None and (fold.residual is None or fold.next_w.shape != (n_out,)):
        raise InputError(f"next_w needs residual and shape ({n_out},), got {tuple(fold.next_w.shape)}"
                         f"{'' if fold.residual is not None else ' without residual'}")
    if fold.ss is not None:
        if (fold.rms is None) == (fold.residual is None):
            raise InputError("ss goes with residual (filled) or with rms (read), not both or neither")
        width = n_out if fold.residual is not None else x.shape[-1]
        if (width % 16 or fold.ss.shape != (*rows, width // 16) or fold.ss.dtype != torch.float32
                or not fold.ss.is_contiguous() or fold.ss.device != x.device):
            raise InputError(f"ss must be {(*rows, width // 16)} float32, contiguous, on {x.device} (width {width} a "
                             f"multiple of 16), got {tuple(fold.ss.shape)} {fold.ss.dtype}")


def glu_interleaved(y: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up from y [..., N], the output of a gated pair in packing.glu_order (each 16 features: 8 of gate,
    then up's 8 of the same features): [..., N / 2]."""
    v = y.unflatten(-1, (y.shape[-1] // 16, 2, 8))
    return (F.silu(v[..., 0, :]) * v[..., 1, :]).flatten(-2)


def _glu_in_stream(m: int, n: int, mt: int | None, staged: bool | None, wk: bool | None) -> bool:
    """Whether the "mma" path at M rows (and these overrides) runs the decode kernel with its warps sharing a tile,
    the kernel whose epilogue can apply a gated pair's SiLU and multiply."""
    staged = mma_staged(m, n) if staged is None else staged
    mt = mt or mma_tiles(m)
    return not staged and mt <= 4 and (stream_wk(m) if wk is None else wk)


def glu_in_kernel(m: int, packed: PackedLinear, x: torch.Tensor) -> bool:
    """Whether w4a16_linear(x, packed, glu=True) at M rows applies the SiLU and multiply in the kernel's epilogue
    (GLU_EPILOGUE: the decode kernel with its warps sharing a tile; GLU_WS: the warp-specialized kernel) rather than as
    torch ops after it (glu_interleaved)."""
    path, _ = kernel_path(m, packed, x)
    if path not in ("mma", "wgmma"):
        return False
    # (the dispatch takes "wgmma" at M <= 32 only where wgmma_ws holds); both paths are a CUDA device's
    return glu_at(m, packed.out_features, x.shape[-1], wgmma=path == "wgmma", sms=_sm_count(x.device))


def glu_ready(packed: PackedLinear) -> bool:
    """Whether the kernels can run this gated pair at all (the "mma" layout on an NVIDIA GPU, the extension built):
    with glu_at, what a compiled step decides without calling into the dispatch while it is traced."""
    return _mma_on_nvidia(packed)


def glu_at(m: int, n: int, k: int, *, wgmma: bool, sms: int = 132) -> bool:
    """For a layer where glu_ready holds, glu_in_kernel at M rows from the shape alone (wgmma: a Hopper GPU of sms
    multiprocessors): the decode kernel with its warps sharing a tile, or with GLU_WS the warp-specialized kernel."""
    if not GLU_EPILOGUE:
        return False
    if wgmma and wgmma_ws(m, n, k, sms):
        return GLU_WS
    return m <= STREAM_MAX_M and _glu_in_stream(m, n, None, None, None)


def mlp_ready(pair: PackedLinear, down: PackedLinear) -> bool:
    """Whether w4a16_mlp can run this gated pair (packing.glu_order) and its down projection in one launch at all: the
    "mma" layout of both on an NVIDIA GPU, the extension built, one symmetry, no act-order, down taking the pair's
    outputs. mlp_at says at which rows."""
    return (pair.perm is None and down.perm is None and (pair.zeros is None) == (down.zeros is None)
            and pair.out_features % 16 == 0
            and down.in_features * 2 == pair.out_features and _mma_on_nvidia(pair) and _mma_on_nvidia(down))


def mlp_at(m: int, pair: PackedLinear, sms: int) -> bool:
    """For layers where mlp_ready holds, whether w4a16_mlp at M rows on a GPU of sms multiprocessors takes the one
    launch: FUSED_MLP, 1 <= M <= MLP_MAX_M, and the gated pair unsplit there as w4a16_linear would run it (mma_splits),
    so that both give the same bits."""
    # (mma_splits is the same at every M of one token tile: M = 1 stands for them, and a traced M is only compared)
    return (FUSED_MLP and 1 <= m <= MLP_MAX_M
            and mma_splits(1, pair.out_features, pair.in_features, sms, staged=False, mt=1, wk=True) == 1)


def _mlp_sync(device: torch.device, ints: int) -> torch.Tensor:
    """The fused MLP kernel's arrival counters (zero, and left zero by the kernel)."""
    sync = _buffers.get(("mlp_sync", device))
    if sync is None or sync.numel() < ints:
        sync = _buffers[("mlp_sync", device)] = torch.zeros(max(ints, 64), dtype=torch.int32, device=device)
    return sync


def w4a16_mlp(x: torch.Tensor, pair: PackedLinear, down: PackedLinear, *, backend: str = "auto",
              splits: int | None = None, pdl: bool | None = None, down_pdl: bool | None = None) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)) for a gated pair in packing.glu_order (packing.interleave_glu) and its down
    projection, neither with a bias: [..., down.out_features]. One launch (csrc qk_mma_mlp) where backend is "auto"
    or "kernel", mlp_ready holds and mlp_at holds at x's rows; else w4a16_linear(glu=True) then w4a16_linear, which
    the one launch matches bit for bit where those run blocks of STREAM_WK_WARPS warps (the pair unsplit, down's
    splits summed in the same order). splits: down's
    split-K (default mma_splits, as w4a16_linear's); pdl: the launch (or the pair's) as a programmatic dependent
    launch (default STREAM_PDL); down_pdl: down's where there are two launches."""
    _check_inputs(x, pair, None, backend)
    lead, k = x.shape[:-1], x.shape[-1]
    m = math.prod(lead) if lead else 1
    one = (backend in ("auto", "kernel") and _on_layer_device(x, pair) and mlp_ready(pair, down)
           and mlp_at(m, pair, _sm_count(x.device)))
    if not one:
        y = w4a16_linear(x, pair, backend=backend, glu=True, pdl=pdl)
        return w4a16_linear(y, down, backend=backend, splits=splits, pdl=down_pdl)
    selfcheck.self_check(x.device)
    x2, _ = _operands(x.reshape(m, k).contiguous(), None)
    n1, n2 = pair.out_features, down.out_features
    splits = splits or mma_splits(m, n2, n1 // 2, _sm_count(x.device), staged=False, mt=1, wk=True)
    z = grid_splits(n1 // 2, splits)
    ws, counters = _workspace(x.device, z * m * n2 if z > 1 else 0, n2 // 16)
    mid = torch.empty(m, n1 // 2, dtype=x.dtype, device=x.device)
    out = torch.empty(m, n2, dtype=x.dtype, device=x.device)
    build.load_extension().mlp_gemm(x2, pair.mma_weight, pair.mma_meta(x.dtype), down.mma_weight,
                                    down.mma_meta(x.dtype), mid, out, ws, counters, _mlp_sync(x.device, z + 1),
                                    pair.group_size, down.group_size, pair.zeros is None, splits,
                                    STREAM_PDL if pdl is None else pdl)
    return out.reshape(*lead, n2)


def rope_rows(y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_cache: torch.Tensor,
              value_cache: torch.Tensor, position: torch.Tensor, heads: int) -> torch.Tensor:
    """The rotary epilogue of w4a16_rope_qkv in torch ops, from y [M, N], the outputs of a fused q/k/v projection in
    packing.rope_order: q and k rotated in fp32 from y (transformers' rotate_half convention, cos and sin [M or 1, D]),
    rounded once; k and v written into the caches [M, kv, len, D] at position; returns q [M, heads * D]."""
    m, kv, d = y.shape[0], key_cache.shape[1], key_cache.shape[-1]
    half, rot = d // 2, heads + kv
    pairs = y[:, : rot * d].reshape(m, rot, d // 16, 2, 8).float()
    lo, hi = pairs[..., 0, :].reshape(m, rot, half), pairs[..., 1, :].reshape(m, rot, half)
    c, s = cos.reshape(-1, 1, d).float(), sin.reshape(-1, 1, d).float()
    rotated = torch.cat([lo * c[..., :half] - hi * s[..., :half], hi * c[..., half:] + lo * s[..., half:]], -1)
    rotated = rotated.to(y.dtype)
    at = position.reshape(1).to(key_cache.device)
    key_cache.index_copy_(2, at, rotated[:, heads:].unsqueeze(2))
    value_cache.index_copy_(2, at, y[:, rot * d:].reshape(m, kv, 1, d))
    return rotated[:, :heads].reshape(m, heads * d).contiguous()


# The most rows (one token tile) at which the decode kernel runs w4a16_rope_qkv's rotary epilogue (rope_at).
ROPE_MAX_M = 8


def rope_at(m: int, packed: PackedLinear) -> MmaPlan | None:
    """The decode kernel's launch that w4a16_rope_qkv at M rows takes for its rotary epilogue, from the layer's shape
    and device alone (what a compiled step decides as it is traced), or None where it would run the layer and
    rope_rows instead: the "mma" path on an NVIDIA GPU at one token tile, its warps sharing a tile, unsplit."""
    if not (1 <= m <= ROPE_MAX_M and _mma_on_nvidia(packed)):
        return None
    n, k, sms = packed.out_features, packed.in_features, _sm_count(packed.device)
    if mma_or_dequant(m, n, k, wgmma=has_wgmma(packed.device), sms=sms) != "mma":
        return None
    plan = mma_plan(m, n, k, sms)
    one = not plan.staged and plan.mt == 1 and plan.wk and grid_splits(k, plan.splits) == 1
    return plan if one else None


def rope_in_kernel(m: int, packed: PackedLinear, x: torch.Tensor) -> MmaPlan | None:
    """rope_at for x, where the kernels run at all for it (kernel_path)."""
    return rope_at(m, packed) if kernel_path(m, packed, x)[0] == "mma" else None


def w4a16_rope_qkv(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, cos: torch.Tensor,
                   sin: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, position: torch.Tensor,
                   heads: int, *, backend: str = "auto", pdl: bool | None = None) -> torch.Tensor:
    """A decode step's fused q/k/v projection (packing.interleave_rope: [q; k; v] with q's and k's rows in
    packing.rope_order) with the rotary embedding and the cache write: x [B, 1, K] (or [B, K]), one token a sequence;
    cos and sin [B or 1, (1,) D]; key_cache and value_cache [B, kv, len, D], written in place at position (a
    one-element int64 tensor: the same for every sequence). Returns q [..., heads * D], rotated, in its own order.
    In the decode kernel's epilogue (csrc QkRope) where rope_in_kernel holds and backend is "auto" or "kernel", else
    w4a16_linear then rope_rows, which the kernel matches bit for bit but for the rotation's fused multiply-adds."""
    _check_inputs(x, packed, bias, backend)
    lead, k = x.shape[:-1], x.shape[-1]
    m = math.prod(lead) if lead else 1
    if key_cache.dim() != 4 or value_cache.shape != key_cache.shape:
        raise InputError(f"key_cache and value_cache must be [B, kv, len, D] alike, got {tuple(key_cache.shape)} and "
                         f"{tuple(value_cache.shape)}")
    b, kv, _, d = key_cache.shape
    if m != b or packed.out_features != (heads + 2 * kv) * d or d % 16:
        raise InputError(f"the rotary q/k/v layer: x must have one row a sequence ({b}) and the layer (heads + 2 kv) "
                         f"D = {(heads + 2 * kv) * d} rows, D a multiple of 16; got {m} rows, {packed.out_features}, "
                         f"D = {d}")
    if cos.shape[-1] != d or sin.shape != cos.shape or cos.numel() not in (d, m * d):
        raise InputError(f"cos and sin must be [{m} or 1, {d}], got {tuple(cos.shape)} and {tuple(sin.shape)}")
    plan = rope_in_kernel(m, packed, x) if backend in ("auto", "kernel") else None
    if plan is None:
        y = w4a16_linear(x, packed, bias, backend=backend, pdl=pdl).reshape(m, packed.out_features)
        return rope_rows(y, cos, sin, key_cache, value_cache, position, heads).reshape(*lead, heads * d)
    selfcheck.self_check(x.device)
    x2 = x.reshape(m, k)
    x2 = x2.index_select(1, packed.perm) if packed.perm is not None else x2.contiguous()
    x2, b16 = _operands(x2, bias)
    q = torch.empty(m, heads * d, dtype=x.dtype, device=x.device)
    cos2, sin2 = (t.reshape(-1, d).to(x.dtype).contiguous() for t in (cos, sin))
    build.load_extension().mma_rope_gemm(x2, packed.mma_weight, packed.mma_meta(x.dtype), b16, q, packed.group_size,
                                         packed.zeros is None, STREAM_PDL if pdl is None else pdl, plan.warps, cos2,
                                         sin2, position.reshape(1), key_cache, value_cache, heads)
    return q.reshape(*lead, heads * d)


def mma_or_dequant(m: int, n: int, k: int, *, wgmma: bool = False, sms: int = 132) -> str:
    """The NVIDIA path for this shape on a GPU of sms multiprocessors (measured on an H100 and an H200:
    docs/kernel.md)."""
    if m <= STREAM_MAX_M:
        return "wgmma" if wgmma and ws_decode(m, n, k) else "mma"
    if wgmma:
        if wgmma_ws(m, n, k, sms):
            return "wgmma"
        big = n * k >= (WGMMA_MIN_NK_64 if m <= 64 else WGMMA_MIN_NK)
        return "wgmma" if m <= WGMMA_MAX_M and big else "dequant"
    if m <= MMA_MAX_M and (n >= STAGED_MIN_N or n * k > 1 << 24):
        return "mma"
    if m <= 2 * MMA_MAX_M and n >= STAGED_MIN_N:
        return "mma"
    return "dequant"


def w4a16_linear(
    x: torch.Tensor,
    packed: PackedLinear,
    bias: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    splits: int | None = None,
    mt: int | None = None,
    staged: bool | None = None,
    pdl: bool | None = None,
    bt: int | None = None,
    dense: bool | None = None,
    wk: bool | None = None,
    wsm: bool | None = None,
    cluster: bool | None = None,
    ws: bool | None = None,
    multicast: bool | None = None,
    stream_k: bool | None = None,
    pipelined: bool | None = None,
    warm: tuple[PackedLinear, int | None] | None = None,
    glu: bool = False,
    fold: Fold | None = None,
    wk_warps: int | None = None,
) -> torch.Tensor:
    """y = x W^T (+ bias) for x [..., K] in float16/bfloat16 and a prepared 4-bit layer; y is [..., N] in x.dtype.

    glu: the layer is a gated pair in packing.glu_order (packing.interleave_glu) and the result is silu(gate) * up,
    [..., N / 2]: applied in the decode kernel's epilogue where it runs with its warps sharing a tile, or with GLU_WS
    the warp-specialized kernel's (glu_in_kernel), else by glu_interleaved after the layer.

    warm (layer, max_bytes): after this layer, request that one's packed scales and the first max_bytes (None: all)
    of its weights into the L2, as l2_prefetch does: from the decode kernel's blocks as they finish where it runs
    with its warps sharing a tile and L2_PREFETCH_IN_KERNEL holds, else by l2_prefetch's own launch after it (nothing
    where l2_prefetch_ready does not hold for that layer or it is on another device).

    fold (Fold, its tensors in x's leading shape): a decoder layer's residual add and RMSNorm folded in: into the
    decode kernel where the "mma" path runs it (not staged), else applied in torch ops after the kernel (and the
    reference). With fold.next_w the result is [2, ..., N]: the residual stream, then the next RMSNorm's input before
    its scale (quantkit.eval.fuse's folded decoder layers).

    splits / mt / staged / pdl / wk / wk_warps override the split-K count, token tiles and kernel of the "mma" path
    (pdl: launch the decode kernel as a programmatic dependent launch, default STREAM_PDL, and the warp-specialized wgmma
    kernel as one of the packing of x, default ws_pdl(); wk: the decode kernel's warps
    sharing a tile, default stream_wk(); wk_warps: that block's warps, 4 or 8, default stream_wk_warps());
    splits also that of the "wmma" path (default wmma_splits); splits / bt /
    dense / wsm those of
    the "wgmma" path (dense=False: its one-block-per-multiprocessor instance; the default is the two-blocks instance
    for 64 and 128 tokens per block; wsm: weights through shared memory, default WGMMA_WSM; ws: the warp-specialized
    kernel, default wgmma_ws(), which takes bt and splits but neither dense nor wsm; multicast: its blocks sharing x
    in pairs, default WS_MULTICAST where it can; stream_k: its blocks persistent over the tiles and their steps,
    default WS_STREAM_K's rule, True wherever it can, False never; pipelined: at 32 tokens a block its pipelined
    instance, default WS_PIPELINED_32); cluster: split-K
    through a thread-block cluster on Hopper (mma streaming and wgmma paths) whenever there are 2 to CLUSTER_MAX
    splits (True) or never (False); default: up to STREAM_CLUSTER_MAX / WGMMA_CLUSTER_MAX splits. For benchmarking
    and tuning.
    """
    _check_inputs(x, packed, bias, backend)
    if glu and packed.out_features % 16:
        raise InputError(f"a gated pair (glu) has a multiple of 16 output features, this layer {packed.out_features}")
    n_out = packed.out_features // 2 if glu else packed.out_features
    if fold is not None:
        _check_fold(fold, x, n_out, glu)
    lead, k = x.shape[:-1], x.shape[-1]
    m = math.prod(lead) if lead else 1
    path, reason = kernel_path(m, packed, x) if backend != "reference" else ("", "")
    if backend == "reference" or (backend == "auto" and not path):
        if fold is not None and fold.rms is not None:  # the rows in fp32, the scale, bias and roundings after them
            rows = F.linear(x.float(), reference_weight(packed, torch.float32).to(x.device))
            return _scaled_after(rows, bias, glu, fold, x.dtype)
        y = reference_linear(x, packed, bias)
        y = glu_interleaved(y) if glu else y
        return y if fold is None else _added_after(y, fold)
    if backend == "auto":
        selfcheck.self_check(x.device)
        backend = path
    elif backend == "kernel":
        if not path:
            raise UnsupportedError(f"no W4A16 kernel can run this layer: {reason}")
        selfcheck.self_check(x.device)
        backend = path
    else:
        _check_forced(backend, packed, x)
    if m == 0:
        return x.new_zeros(*((2,) if fold is not None and fold.next_w is not None else ()), *lead, n_out)
    # the fold after the kernel, in torch ops, where the kernel that runs cannot take it (with an RMSNorm scale its rows
    # then come without the bias and the pair's SiLU and multiply)
    after = fold is not None and not (backend == "mma" and not (mma_staged(m, packed.out_features) if staged is None
                                                                 else staged))
    rows = fold.rows(m, k, n_out) if fold is not None else None
    bias_k, glu_k = (None, False) if after and fold.rms is not None else (bias, glu)
    x2 = x.reshape(m, k)
    if backend == "wgmma":  # _wgmma puts x in its kernel's k order (and act-order) itself
        x2 = x2.contiguous()
    else:
        x2 = x2.index_select(1, packed.perm) if packed.perm is not None else x2.contiguous()
    x2, b = _operands(x2, bias_k)
    if warm is not None and not (l2_prefetch_ready(warm[0]) and _on_layer_device(x2, warm[0])):
        warm = None
    ranges = _prefetch_ranges(warm[0], x.dtype, warm[1]) if warm is not None else None
    glu_fold = glu_k and GLU_EPILOGUE and (
        (backend == "mma" and _glu_in_stream(m, packed.out_features, mt, staged, wk))
        or (backend == "wgmma" and GLU_WS and not (pipelined or cluster)
            and (wgmma_ws(m, packed.out_features, k, _sm_count(x.device)) if ws is None else ws)))
    if backend == "mma":  # _mma issues the prefetch itself, from its kernel where it can
        y, ranges = _mma(x2, packed, b, splits, mt, staged, pdl, wk, cluster, warm=ranges, glu=glu_fold,
                         fold=None if after else rows, wk_warps=wk_warps), None
    elif backend == "wgmma":
        y = _wgmma(x2, packed, b, splits, bt, dense, wsm, cluster, ws, multicast, stream_k, pdl, pipelined=pipelined,
                   glu=glu_fold)
    elif backend == "dequant":
        y = F.linear(x2, dequantize_weight(packed, x.dtype), b)
    elif backend == "wmma":
        y = _wmma(x2, packed, b, splits)
    else:
        y = _dot2(x2, packed, b)
    if ranges is not None:
        build.load_extension().l2_prefetch(*ranges)
    if glu_k and not glu_fold:
        y = glu_interleaved(y)
    if after:
        y = _added_after(y, rows) if fold.rms is None else _scaled_after(y, bias, glu, rows, x.dtype)
    return y.reshape(*((2,) if y.dim() == 3 else ()), *lead, n_out)
