// w4a16_wgmma_ws_cuda.h — the Hopper (sm_90a) prefill kernel, warp-specialized: one producer warp only loads,
// through tensor copies (cp.async.bulk.tensor, the TMA engine, over tensor maps the launcher encodes) that complete
// on per-stage mbarriers, and two consumer warpgroups only dequantize and multiply. CUDA only.
//
// Same product, weight layout, register A operand and shared-memory B tile as qk_wgmma_gemm (w4a16_wgmma_cuda.h),
// which keeps both warpgroups in step with a block barrier and has every thread copy its own part of each stage:
// there both warpgroups dequantize at the same time and the tensor cores wait (docs/kernel.md, item 25). Here:
//   - warp 8 (the producer; its lane 0) fills stage s with three tensor copies (QkWsMaps): step i's x tile (the
//     block's rows of KS chunks of the packed image of the swizzled tile: x comes from qk_wgmma_pack_x as
//     [K / 64][M][64], act-order and MMA k order applied), the 8 tiles' weights of those chunks, and the scales of
//     2 KS groups from the step's first (every box a fixed size: rows, tiles, chunks and groups past the tensor's end
//     arrive as zeros and count their bytes all the same), on full[s]; before refilling a stage it waits on empty[s];
//   - warps 0-7 (warpgroups 0 and 1, 64 rows each) wait on full[s], read their 16 weight bytes and scales, dequantize,
//     issue 4 KS wgmma (N = BT tokens), wait for them and arrive on empty[s] (a warp each). Nothing else ties the two
//     warpgroups together, so one dequantizes while the other's MMAs run.
// One block per multiprocessor, 128 rows (a 16-row tile a consumer warp). 64 or 128 tokens: 288 threads (168
// registers a thread: the register file is split over the 4 schedulers and one of them holds 3 warps); the epilogue
// and split-K are the mma kernels' (the producer warp joins it with no tile of its own). 256 tokens (128 accumulators
// a thread): 384 threads, the producer is warpgroup 2, which gives registers to the consumers (setmaxnreg: 40 for it,
// 232 for them) and leaves after its last copy (the epilogue's barriers, split-K's included, then wait for the
// consumers only). Split-K of the grid inside a cluster: qk_ws_cluster_reduce, at every tile. Stream-K's partial tiles:
// qk_ws_sk_fixup. Launched as a programmatic dependent of qk_wgmma_pack_x (the launcher's pdl), the producer requests
// its first STAGES steps' weights and scales before waiting for the packing (griddepcontrol.wait), their x after.
#pragma once

#include "w4a16_wgmma_cuda.h"

#if QK_IS_CUDA
#include <cuda.h>  // CUtensorMap (the driver's encoder is reached through the runtime: no link to libcuda)

// The producer's three tensor maps (encoded by the launcher, qk_ws_encode_maps; a kernel parameter, __grid_constant__):
//   x: xp as [chunks][M][64] 16-bit, box [KS][BT][64];
//   w: the weights as [N / 16 tiles][chunks][128] 32-bit words (512 bytes a tile's chunk), box [8][KS][128];
//   s: the scales as [N / 16 tiles][groups][2 MV] 32-bit words (8 rows x MV bytes a group), box [8][2 KS][2 MV];
//   multicast 2: the launch pairs blocks along y into clusters, which share x: each loads half of the x box (half
//   its chunks, or, at one chunk a stage, half its rows; the x map's box is that half) into both blocks' stages at
//   once (.multicast::cluster), and a stage is refilled only when the consumers of both have released it.
struct QkWsMaps {
  CUtensorMap x, w, s;
  int multicast;
  int probe;  // 0; a diagnostic's 1 to 4 (qk_wgmma_ws's PROBE instances)
};

#define QK_WS_CONSUMER_WARPS 8
// Chunks a stage holds at bt tokens (the instances, w4a16_launch_wgmma_ws{,_big,_small}.cu): 32 and 64 x 4 (more
// would not leave the registers for the A operand), 16 x 2 (two blocks a multiprocessor: qk_ws_blocks_per_sm),
// 128 x 2, 256 x 1.
__host__ __device__ constexpr int qk_ws_ks(int bt) { return bt == 16 || bt == 128 ? 2 : bt == 256 ? 1 : 4; }
// Whether the producer warpgroup hands its registers to the consumers (bt 256: 128 accumulators a thread; pl: a
// pipelined instance, below).
__host__ __device__ constexpr bool qk_ws_regs(int bt, bool pl = false) { return bt == 256 || pl; }
// Whether the consumers dequantize the next step while this step's MMAs run (two A register sets): at 256 tokens,
// where the consumers have the registers (qk_ws_regs) and a step is one chunk, and in the pipelined instance at 32
// tokens (pl: 16 accumulators and two sets of 64 A registers; item 44), an option, measured 1-7% slower (item 47).
__host__ __device__ constexpr bool qk_ws_pipe(int bt, bool pl = false) { return bt == 256 || pl; }
// Blocks a multiprocessor holds: two at 16 tokens (registers capped at 96 a thread, 2 chunks a stage, so that twice
// the consumer warps dequantize and wait for their MMAs), else one.
__host__ __device__ constexpr int qk_ws_blocks_per_sm(int bt) { return bt == 16 ? 2 : 1; }
// Threads of a block: the consumers' 8 warps and a producer warp, or (qk_ws_regs) a producer warpgroup.
__host__ __device__ constexpr int qk_ws_threads(int bt, bool pl = false) {
  return 32 * QK_WS_CONSUMER_WARPS + (qk_ws_regs(bt, pl) ? 128 : 32);
}
// qk_ws_regs: registers a thread of the producer warpgroup keeps and one of the consumers' gets (40 x 128 + 232 x 256
// <= 65536; setmaxnreg takes multiples of 8 from 24 to 256).
#define QK_WS_PRODUCER_REGS 40
#define QK_WS_CONSUMER_REGS 232

// One stage: x (KS sub-tiles of BT rows x 128 bytes), the weights [tile][chunk] (8 tiles x KS x 512 bytes), the
// scales [tile][group][row] (8 x 2 KS groups x 8 rows x 4 bytes, 8 asymmetric: a step of KS chunks touches at most
// 2 KS groups), rounded up to 1024 bytes (the 128-byte swizzle repeats every 1024).
__host__ __device__ constexpr int qk_ws_stage_bytes(int bt, int ks, bool sym) {
  return (ks * bt * 128 + 8 * ks * 512 + 8 * 2 * ks * 8 * (sym ? 4 : 8) + 1023) / 1024 * 1024;
}
// The whole ring, plus slack to align its base to 1024 bytes.
__host__ __device__ constexpr int qk_ws_smem_bytes(int bt, int stages, int ks, bool sym) {
  return qk_ws_stage_bytes(bt, ks, sym) * stages + 1024;
}

#if QK_HAS_WGMMA
// Shared-memory mbarriers: init with an arrival count, arrive, arrive and set the bytes the phase waits for, wait
// for the phase of a parity to complete.
QK_INLINE void qk_mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
QK_INLINE void qk_mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
QK_INLINE void qk_mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Arrive on the barrier at the same shared-memory offset in block rank of the cluster.
QK_INLINE void qk_mbar_arrive_cluster(uint32_t bar, uint32_t rank) {
  asm volatile(
      "{\n.reg .b32 remote;\nmapa.shared::cluster.u32 remote, %0, %1;\n"
      "mbarrier.arrive.shared::cluster.b64 _, [remote];\n}\n" ::"r"(bar),
      "r"(rank)
      : "memory");
}
QK_INLINE uint32_t qk_cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
// Every thread of every block of the cluster (release / acquire).
QK_INLINE void qk_cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
QK_INLINE void qk_mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done)
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(bar), "r"(parity)
                 : "memory");
}
// One 3-D tensor copy global -> shared of map's box at (c0, c1, c2) (innermost first), completing on bar by the box's
// bytes; dst 128-byte aligned.
QK_INLINE void qk_tensor_copy_3d(uint32_t dst, const CUtensorMap& map, int c0, int c1, int c2, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}
// The same, the box landing at dst in every block of the cluster that mask names, each completing on its own bar.
QK_INLINE void qk_tensor_copy_3d_multicast(uint32_t dst, const CUtensorMap& map, int c0, int c1, int c2, uint32_t bar,
                                           uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, "
      "{%2, %3, %4}], [%5], %6;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar), "h"(mask)
      : "memory");
}
QK_INLINE void qk_tensor_map_prefetch(const CUtensorMap& map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&map)) : "memory");
}
// The registers of every thread of the executing warpgroup, lowered or raised (warpgroup-wide).
template <int R>
QK_INLINE void qk_setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R));
}
template <int R>
QK_INLINE void qk_setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R));
}
#endif

// What a block of qk_wgmma_ws computes, one work item at a time: tile (bx token tile, by 128-row block; cell = by
// tiles_x + bx, the index of its split-K counter), chunks [c0, c1) of it, and which of the tile's nz partial sums that
// is (z). The grid's block (ctas 0) has one item, (blockIdx.x, blockIdx.y) and split blockIdx.z. Stream-K (ctas > 0
// persistent blocks, the grid along x, one a multiprocessor): of the tiles, the first dp_tiles (whole waves of ctas)
// go whole to the blocks in turn (block g: g, g + ctas, ...); the steps (KS chunks) of the rest are cut into runs as
// equal as can be among the first sk_blocks blocks, block g's [g U / sk_blocks, (g + 1) U / sk_blocks) of U = (tiles -
// dp_tiles) steps_per_tile. A run that covers part of a tile gives a partial sum, added through the workspace
// (qk_ws_sk_fixup) in the order of the blocks that hold the tile's runs (z = g - the first of them). Every run must be
// at least a step (valid()). __host__ too: the launcher checks that and sizes the workspace (max_splits).
struct QkWsWalk {
  int ctas, sk_blocks, tiles_x, tiles, steps, ks, chunks, dp_tiles;
  unsigned units;  // 32-bit arithmetic (64-bit division is a long routine that the consumers' registers cannot afford):
                   // valid() checks that units x sk_blocks does not overflow
  QK_INLINE __host__ QkWsWalk(int ctas_, int sk_blocks_, int M, int N, int K, int bt, int ks_)
      : ctas(ctas_), sk_blocks(sk_blocks_), tiles_x((M + bt - 1) / bt), tiles(tiles_x * ((N + 127) / 128)),
        steps((K / 64 + ks_ - 1) / ks_), ks(ks_), chunks(K / 64), dp_tiles(ctas_ > 0 ? tiles / ctas_ * ctas_ : 0),
        units((unsigned)(tiles - dp_tiles) * (unsigned)steps) {}
  // Whether the kernel can walk it: units x sk_blocks within 32 bits, and every stream-K run at least a step.
  QK_INLINE __host__ bool valid() const {
    return (unsigned long long)(tiles - dp_tiles) * steps * (sk_blocks + 1) < (1ull << 32) &&
           (units == 0 || units >= (unsigned)sk_blocks);
  }
  // The first unit of block g's stream-K run (g >= sk_blocks: the end, an empty run).
  QK_INLINE __host__ unsigned start(int g) const { return units * (unsigned)min(g, sk_blocks) / (unsigned)sk_blocks; }
  // The block whose run holds unit u: the last g with start(g) <= u.
  QK_INLINE __host__ int owner(unsigned u) const {
    return (int)(((u + 1) * (unsigned)sk_blocks + units - 1) / units) - 1;
  }
  // The most partial sums any tile has (the workspace's depth); 1 without stream-K.
  QK_INLINE __host__ int max_splits() const {
    if (ctas == 0 || units == 0) return 1;
    const unsigned least = units / (unsigned)sk_blocks;  // steps in the shortest run
    return least > 0 ? (int)((steps - 1) / least + 2) : sk_blocks;
  }
};
struct QkWsItem {
  int bx, by, cell, c0, c1, z, nz;
};
// Stream-K item j of block g (w.ctas > 0), false past its last. __host__ too, for the walk's CPU test
// (tests/test_ws_walk.py).
QK_INLINE __host__ bool qk_ws_sk_item(const QkWsWalk& w, int g, int j, QkWsItem& it) {
  const int whole = g < w.dp_tiles ? (w.dp_tiles - g + w.ctas - 1) / w.ctas : 0;  // block g's whole tiles
  int cell, s0 = 0, s1 = w.steps, z = 0, nz = 1;
  if (j < whole) {
    cell = g + j * w.ctas;
  } else {
    if (w.units == 0) return false;
    const unsigned u0 = w.start(g), u1 = w.start(g + 1);
    const int t = (int)(u0 / (unsigned)w.steps) + (j - whole);  // the run's (j - whole)-th tile of the rest
    const unsigned t0 = (unsigned)t * (unsigned)w.steps;
    if (u0 >= u1 || t0 >= u1) return false;
    s0 = u0 > t0 ? (int)(u0 - t0) : 0, s1 = (int)min((unsigned)w.steps, u1 - t0);
    const int first = w.owner(t0), last = w.owner(t0 + w.steps - 1);
    z = g - first, nz = last - first + 1;
    cell = w.dp_tiles + t;
  }
  it = {cell % w.tiles_x, cell / w.tiles_x, cell, s0 * w.ks, min(w.chunks, s1 * w.ks), z, nz};
  return true;
}
// Item j of block g (QkWsWalk), false past its last: the grid's one, or stream-K's (qk_ws_sk_item). Stateless, so
// that a consumer can work it out again after its main loop instead of holding it in registers through it.
QK_INLINE bool qk_ws_item(const QkWsWalk& w, int g, int j, int chunks_per_split, QkWsItem& it) {
  if (w.ctas == 0) {  // the grid's one item
    const int c0 = (int)blockIdx.z * chunks_per_split;
    it = {(int)blockIdx.x, (int)blockIdx.y, (int)(blockIdx.y * gridDim.x + blockIdx.x), c0,
          min(w.chunks, c0 + chunks_per_split), (int)blockIdx.z, (int)gridDim.z};
    return j == 0;
  }
  return qk_ws_sk_item(w, g, j, it);
}

// Outputs n .. n + 3 of a token (v, fp32 sums; + bias), each rounded once to 16 bits, as one 8-byte store at out + at
// (at = tok N + n, n = at % N).
template <typename Tag>
QK_INLINE void qk_store4_out(float4 v, size_t at, const uint16_t* __restrict__ bias, uint16_t* __restrict__ out,
                             int N) {
  const size_t n = at % (size_t)N;
  float b[4] = {0.f, 0.f, 0.f, 0.f};
  if (bias)
#pragma unroll
    for (int q = 0; q < 4; ++q) b[q] = qk_bits_to_float(bias[n + q], Tag());
  const uint32_t lo =
      (uint32_t)qk_float_to_bits(v.x + b[0], Tag()) | ((uint32_t)qk_float_to_bits(v.y + b[1], Tag()) << 16);
  const uint32_t hi =
      (uint32_t)qk_float_to_bits(v.z + b[2], Tag()) | ((uint32_t)qk_float_to_bits(v.w + b[3], Tag()) << 16);
  *reinterpret_cast<uint2*>(out + at) = make_uint2(lo, hi);
}
// Split-K of the grid inside a thread-block cluster (its gridDim.z splits of a tile one cluster, in rank order =
// blockIdx.z): each block stores its sums in its stage ring as a row-major tile red[token][output] (rows of
// QK_WS_RED_LD floats), then block r adds the cluster's tiles over its share of the token rows, 4 outputs a float4 load
// from each block's shared memory, several loads in flight, and writes them rounded once, 8 bytes a store. The same
// fp32 additions in the same order as the workspace path (qk_mma_epilogue's), so the same bits. Threads below THREADS
// (the consumers) hold sums and add; the others only join the barriers (the producer warp, or none: the 256-token
// producer warpgroup has left, and threads that have exited hold up neither bar.sync nor barrier.cluster). False,
// doing nothing, unless the launch made the gridDim.z splits one cluster.
constexpr int QK_WS_RED_LD = 132;  // 128 outputs + 4: one element of a warp's fragments (8 outputs x 4 token rows 2
                                   // apart) falls in 32 distinct banks
template <typename Tag, int MT, int THREADS>
QK_INLINE bool qk_ws_cluster_reduce(const float (&acc)[1][MT][4], float* red, int n0, int m0,
                                    const uint16_t* __restrict__ bias, uint16_t* __restrict__ out, int M, int N) {
#if QK_SM90
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  const int blocks = (int)cluster.num_blocks();
  if (blocks != (int)gridDim.z) return false;
  constexpr int ROWS = 8 * MT, U = 4;  // the tile's tokens; float4s a thread adds at once
  const int t = (int)threadIdx.x, lane = t % 32, gid = lane / 4, tig = lane % 4;
  __syncthreads();  // every warpgroup's MMAs have read the stages that red overwrites
  if (t < THREADS)
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        red[(8 * i + 2 * tig + (e & 1)) * QK_WS_RED_LD + 16 * (t / 32) + gid + 8 * (e >> 1)] = acc[0][i][e];
  cluster.sync();
  if (t < THREADS) {
    const int rank = (int)cluster.block_rank();
    const int end = (rank + 1) * ROWS / blocks * 32;  // this block's rows' float4s: [rank ROWS / blocks, ..) x 32
#pragma unroll 1
    for (int base = rank * ROWS / blocks * 32 + t; base < end; base += THREADS * U) {
      float4 v[U];
#pragma unroll
      for (int u = 0; u < U; ++u) v[u] = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 1
      for (int p = 0; p < blocks; ++p) {
        const float* src = cluster.map_shared_rank(red, p);
        float4 q[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int idx = base + u * THREADS;
          q[u] = idx < end ? *reinterpret_cast<const float4*>(src + idx / 32 * QK_WS_RED_LD + idx % 32 * 4)
                           : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) v[u].x += q[u].x, v[u].y += q[u].y, v[u].z += q[u].z, v[u].w += q[u].w;
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int idx = base + u * THREADS, tok = m0 + idx / 32, n = n0 + idx % 32 * 4;
        if (idx < end && tok < M && n < N) qk_store4_out<Tag>(v[u], (size_t)tok * N + n, bias, out, N);
      }
    }
  }
  cluster.sync();  // no block leaves while another still reads its shared memory
  return true;
#else
  return false;
#endif
}

// Stream-K's partial sums (QkWsWalk): part z of tile cell is the ACC x THREADS floats at ws + (z tiles + cell) ACC
// THREADS, in the consumers' fragment order, float4 q of thread t at float4 q THREADS + t (a warp's store or load: 512
// contiguous bytes). Dead warps' and padding tokens' sums (zeros) go along: the part is the whole tile.
template <int ACC, int THREADS>
QK_INLINE void qk_ws_part_store(const float (&acc)[ACC], float* __restrict__ part) {
#pragma unroll
  for (int q = 0; q < ACC / 4; ++q)
    __stcg(reinterpret_cast<float4*>(part) + q * THREADS + threadIdx.x,
           make_float4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]));
}
template <int ACC, int THREADS>
QK_INLINE void qk_ws_part_add(float (&acc)[ACC], const float* __restrict__ part) {
  constexpr int U = ACC / 4 < 8 ? ACC / 4 : 8;  // float4 loads in flight a thread
#pragma unroll
  for (int q0 = 0; q0 < ACC / 4; q0 += U) {
    float4 p[U];
#pragma unroll
    for (int u = 0; u < U; ++u) p[u] = __ldcg(reinterpret_cast<const float4*>(part) + (q0 + u) * THREADS + threadIdx.x);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      acc[4 * (q0 + u)] += p[u].x, acc[4 * (q0 + u) + 1] += p[u].y;
      acc[4 * (q0 + u) + 2] += p[u].z, acc[4 * (q0 + u) + 3] += p[u].w;
    }
  }
}
// A stream-K item that holds part it.z of its tile's it.nz (by the consumers, THREADS threads; acc: that part's sums):
// true when acc then holds the tile's whole sums, for this block to write out. Part 0 (the tile's first chunks) ends
// its block's run, when the others, whose runs began in the tile, have mostly stored theirs: if all have, that block
// adds them to acc at once (and stores nothing); otherwise it, like every other part, is stored and arrives on the
// tile's counter, and the last to arrive adds all the parts. Either way part 0 + part 1 + ... in that order, so the
// same bits whoever adds. Nothing waits for another block.
template <int ACC, int THREADS>
QK_INLINE bool qk_ws_sk_fixup(float (&acc)[ACC], const QkWsItem& it, float* __restrict__ ws, int* counter, int tiles) {
  constexpr size_t PART = (size_t)ACC * THREADS;
  float* tile = ws + (size_t)it.cell * PART;
  const size_t stride = (size_t)tiles * PART;  // from one part of a tile to the next
  if (it.z == 0) {
    __shared__ int all_in;
    qk_epilogue_sync<THREADS>();  // every thread has read all_in of this block's previous item
    if (threadIdx.x == 0) all_in = atomicCAS(counter, it.nz - 1, 0) == it.nz - 1;  // the others all in: reset it
    qk_epilogue_sync<THREADS>();
    if (all_in) {
      __threadfence();
      for (int z = 1; z < it.nz; ++z) qk_ws_part_add<ACC, THREADS>(acc, tile + z * stride);
      return true;
    }
  }
  qk_ws_part_store<ACC, THREADS>(acc, tile + it.z * stride);
  if (!qk_split_arrive<THREADS>(counter, it.nz)) return false;
#pragma unroll
  for (int i = 0; i < ACC; ++i) acc[i] = 0.f;
  for (int z = 0; z < it.nz; ++z) qk_ws_part_add<ACC, THREADS>(acc, tile + z * stride);
  return true;
}

// grid x = ceil(M / BT) token tiles, y = ceil(N / 128), z = split-K (through the workspace, or a cluster of the z
// splits: qk_ws_cluster_reduce), or (walk.ctas > 0) stream-K over (walk.ctas, 1, 1) blocks (QkWsWalk); maps
// (QkWsMaps) cover xp (x packed by qk_wgmma_pack_x), w and meta, which the kernel reads through them only. STAGES steps
// of KS chunks in flight. PL: pipelined as at 256 tokens (qk_ws_regs, qk_ws_pipe) at a smaller tile. PROBE (a
// diagnostic's instances, not the product; the others hold none of its code): the consumers only wait for each stage
// (maps.probe 2: and read their weights and scales from it; 3: and dequantize them, all but the MMAs) and give it back;
// maps.probe 4: as 1, and the producer copies no x (the ring of weights and scales alone). GLU: the layer is a gated
// pair (packing.glu_order) and out [M, N / 2] gets silu(gate) * up (qk_mma_store_out's); no cluster split-K (its
// reduction writes rows of its own: the launcher refuses a cluster).
template <typename Tag, int BT, bool SYM, int STAGES, int KS, bool PL = false, bool PROBE = false, bool GLU = false>
QK_GLOBAL void __launch_bounds__(qk_ws_threads(BT, PL), qk_ws_blocks_per_sm(BT))
    qk_wgmma_ws(const uint16_t* __restrict__ xp, const uint4* __restrict__ w, const uint16_t* __restrict__ meta,
                const uint16_t* __restrict__ bias, uint16_t* __restrict__ out, float* __restrict__ ws,
                int* __restrict__ counters, int M, int N, int K, int group_size, int chunks_per_split,
                const __grid_constant__ QkWsMaps maps, const __grid_constant__ QkWsWalk walk) {
#if QK_HAS_WGMMA
  constexpr int ACC = BT / 2, MT = BT / 8, MV = SYM ? 4 : 8, G_MAX = 2 * KS;
  constexpr bool REGS = qk_ws_regs(BT, PL);  // the producer warpgroup hands its registers to the consumers
  constexpr bool PIPE = qk_ws_pipe(BT, PL);  // the consumers dequantize a step while the previous step's MMAs run
  constexpr int TILES = 8;              // 16-row tiles a block, one a consumer warp
  constexpr int X_BYTES = KS * BT * 128, W_BYTES = TILES * KS * 512, STAGE_BYTES = qk_ws_stage_bytes(BT, KS, SYM);
  static_assert(X_BYTES + W_BYTES + TILES * G_MAX * 8 * MV <= STAGE_BYTES, "qk_ws_stage_bytes must hold the stage");
  static_assert(STAGES * STAGE_BYTES >= BT * QK_WS_RED_LD * 4, "the stage ring must hold the block's fp32 sums");
  extern __shared__ unsigned char qk_dyn_smem[];
  __shared__ __align__(8) uint64_t bars[2 * STAGES];
  const uint32_t smem0 = (qk_smem_addr(qk_dyn_smem) + 1023) & ~1023u;
  const unsigned char* smem0_ptr = qk_dyn_smem + (smem0 - qk_smem_addr(qk_dyn_smem));
  const uint32_t full0 = qk_smem_addr(bars), empty0 = full0 + 8 * STAGES;

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const bool producer = warp >= QK_WS_CONSUMER_WARPS;
  const int gid = lane / 4, tig = lane % 4;
  const int n_tiles = N / 16;
  // the block's work items (qk_ws_item over walk, a parameter, so read from the constant bank rather than held in
  // registers): the grid's one, or (walk.ctas > 0) stream-K's
  const bool sk = walk.ctas > 0;
  const QkGroupOf group_of(group_size, tig), group_of0(group_size, 0);
  const int mc = maps.multicast;  // 2: this block and its pair along y share x (QkWsMaps)

  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      qk_mbar_init(full0 + 8 * s, 1);  // the producer's arrival (with the stage's bytes)
      // a consumer warp's each, of this block and of its pair, after its MMAs on the stage
      qk_mbar_init(empty0 + 8 * s, QK_WS_CONSUMER_WARPS * mc);
    }
    // the initialized barriers visible to the copies' completions (async proxy) and to the pair's block
    asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;\n" ::: "memory");
  }
  if (mc > 1)
    qk_cluster_sync();  // both blocks' barriers exist before either's copies or arrivals reach them
  else
    __syncthreads();

  float acc[ACC];
#pragma unroll
  for (int i = 0; i < ACC; ++i) acc[i] = 0.f;

  if (producer) {
    if constexpr (REGS) qk_setmaxnreg_dec<QK_WS_PRODUCER_REGS>();
    // Lane 0 issues a stage's three tensor copies (issuing 8 + 8 + KS bulk copies, a lane each, had paced the
    // kernel: docs/kernel.md, item 27).
    if (warp == QK_WS_CONSUMER_WARPS && lane == 0) {
      constexpr uint32_t TX = X_BYTES + W_BYTES + TILES * G_MAX * 8 * MV;  // every box whole, zeros included
      const bool copy_x = !(PROBE && maps.probe == 4);  // probe 4: the weights' and scales' ring alone
      const uint32_t tx = copy_x ? TX : TX - X_BYTES;
      qk_tensor_map_prefetch(maps.x);
      qk_tensor_map_prefetch(maps.w);
      qk_tensor_map_prefetch(maps.s);
      const int rank = mc > 1 ? (int)qk_cluster_rank() : 0;
      // a multicast pair: this block's half of the x box (KS > 1: chunks rank KS / 2.., else rows rank BT / 2..)
      const int x_chunk = KS > 1 ? rank * (KS / 2) : 0, x_row = KS > 1 ? 0 : rank * (BT / 2);
      const uint32_t x_dst = (uint32_t)((x_chunk * BT + x_row) * 128);
      // a programmatic launch (of the packing of x, which wrote xp): the first STAGES steps' weights and scales are
      // requested before waiting for that kernel to finish (qk_pdl_wait, else a no-op), their x after
      // A stage's weights and scales: chunks cs.. of the 8 tiles from tile0.
      auto copy_weights = [&](uint32_t base, int cs, int tile0, uint32_t bar) {
        qk_tensor_copy_3d(base + X_BYTES, maps.w, 0, cs, tile0, bar);
        qk_tensor_copy_3d(base + X_BYTES + W_BYTES, maps.s, 0, group_of0(cs), tile0, bar);
      };
      QkWsItem it;
      int primed = 0;
      for (int j = 0; primed < STAGES && qk_ws_item(walk, (int)blockIdx.x, j, chunks_per_split, it); ++j)
        for (int cs = it.c0; cs < it.c1 && primed < STAGES; cs += KS, ++primed) {
          const uint32_t base = smem0 + (uint32_t)(primed * STAGE_BYTES), bar = full0 + 8 * primed;
          qk_mbar_arrive_expect_tx(bar, tx);
          copy_weights(base, cs, it.by * TILES, bar);
        }
      qk_pdl_wait();
      int i = 0;  // steps issued, over all items: the ring's position and phase
      for (int j = 0; qk_ws_item(walk, (int)blockIdx.x, j, chunks_per_split, it); ++j) {
        const int m0 = it.bx * BT, tile0 = it.by * TILES;
#pragma unroll 1
        for (int cs = it.c0; cs < it.c1; cs += KS, ++i) {
          const int s = i % STAGES;
          const uint32_t base = smem0 + (uint32_t)(s * STAGE_BYTES), bar = full0 + 8 * s;
          if (i >= primed) {
            // its last use, step i - STAGES (in both blocks of a pair)
            if (i >= STAGES) qk_mbar_wait(empty0 + 8 * s, ((i / STAGES) - 1) & 1);
            qk_mbar_arrive_expect_tx(bar, tx);
          }
          // chunks past the item's range bring x (or zeros past K) against weights the consumers zero
          if (copy_x) {
            if (mc > 1)
              qk_tensor_copy_3d_multicast(base + x_dst, maps.x, 0, m0 + x_row, cs + x_chunk, bar, (uint16_t)3);
            else
              qk_tensor_copy_3d(base, maps.x, 0, m0, cs, bar);
          }
          if (i >= primed) copy_weights(base, cs, tile0, bar);
        }
      }
    }
    __syncwarp();
    // REGS: the epilogue's barriers do not wait for threads that have left; stream-K: the consumers' epilogues
    // synchronize among themselves only
    if (REGS || sk) {
      if (mc > 1) qk_cluster_sync();
      return;
    }
  } else {
    if constexpr (REGS) qk_setmaxnreg_inc<QK_WS_CONSUMER_REGS>();
    QkWsItem it;
    int i = 0;  // steps consumed, over all items (as the producer counts them)
    for (int j = 0; qk_ws_item(walk, (int)blockIdx.x, j, chunks_per_split, it); ++j) {
      const int c1 = it.c1;
      const bool live = it.by * TILES + warp < n_tiles;
      // dead consumer warps still take part in their warpgroup's wgmma, zero weights
      // This thread's weights and scales of chunk cs + q from the stage at base (g_lo: the group of chunk cs).
      auto read_chunk = [&](const unsigned char* base, int cs, int g_lo, int q, uint4& wv, uint2& mv, bool whole) {
        const int c = cs + q;
        if (whole || (live && c < c1)) {
          wv = *reinterpret_cast<const uint4*>(base + X_BYTES + (warp * KS + q) * 512 + lane * 16);
          const unsigned char* m = base + X_BYTES + W_BYTES + ((warp * G_MAX + group_of(c) - g_lo) * 8 + gid) * MV;
          mv = SYM ? make_uint2(*reinterpret_cast<const uint32_t*>(m), 0u) : *reinterpret_cast<const uint2*>(m);
        } else {  // zero weights: scale 0 (and zero = magic when asymmetric)
          wv = make_uint4(0, 0, 0, 0);
          mv = make_uint2(0u, QkMagic<Tag>::pair);
        }
      };
      // Step i's A registers: wait for its stage, read the weights and scales, dequantize.
      auto fetch = [&](int cs, int i, uint32_t(&a)[KS][4][4]) {
        const int s = i % STAGES;
        qk_mbar_wait(full0 + 8 * s, (i / STAGES) & 1);
        const unsigned char* base = smem0_ptr + s * STAGE_BYTES;
        const int g_lo = group_of0(cs);
        uint4 wv[KS];
        uint2 mv[KS];
        if (live && cs + KS <= c1) {  // a whole stage of a live warp (most): no test a chunk
#pragma unroll
          for (int q = 0; q < KS; ++q) read_chunk(base, cs, g_lo, q, wv[q], mv[q], true);
        } else {
#pragma unroll
          for (int q = 0; q < KS; ++q) read_chunk(base, cs, g_lo, q, wv[q], mv[q], false);
        }
        qk_wgmma_dequant<Tag, SYM>(wv, mv, a);
      };
      // Step i's stage back to the producer (its MMAs done), a warp's arrival each.
      auto release = [&](int i) {
        const int s = i % STAGES;
        __syncwarp();
        if (lane == 0) {
          if (mc > 1)
            for (int r = 0; r < mc; ++r) qk_mbar_arrive_cluster(empty0 + 8 * s, (uint32_t)r);
          else
            qk_mbar_arrive(empty0 + 8 * s);
        }
      };
      if constexpr (PROBE) {
        // The producer's streaming rate: every stage waited for and given back; level 2 also reads this thread's
        // weights and scales from it, level 3 also dequantizes them (into a sink the compiler keeps): all but the MMAs.
        uint32_t sink = 0;
#pragma unroll 1
        for (int cs = it.c0; cs < c1; cs += KS, ++i) {
          const int s = i % STAGES;
          if (maps.probe == 3) {
            uint32_t a[KS][4][4];
            fetch(cs, i, a);
#pragma unroll
            for (int q = 0; q < KS; ++q)
#pragma unroll
              for (int j = 0; j < 4; ++j) sink ^= a[q][j][0] ^ a[q][j][1] ^ a[q][j][2] ^ a[q][j][3];
            release(i);
            continue;
          }
          qk_mbar_wait(full0 + 8 * s, (i / STAGES) & 1);
          if (maps.probe == 2) {
            const unsigned char* base = smem0_ptr + s * STAGE_BYTES;
            const int g_lo = group_of0(cs);
#pragma unroll
            for (int q = 0; q < KS; ++q) {
              uint4 wv;
              uint2 mv;
              read_chunk(base, cs, g_lo, q, wv, mv, false);
              sink ^= wv.x ^ wv.y ^ wv.z ^ wv.w ^ mv.x ^ mv.y;
            }
          }
          release(i);
        }
        // A store the compiler cannot rule out keeps the reads and dequantization (an empty asm that takes sink does
        // not: ptxas drops it and them); it writes the zero every probe writes.
        if (sink == 0x7fc17fc1u) out[0] = 0;
      } else if constexpr (PIPE) {
        // The next step's dequantization while this step's MMAs run: two A register sets, the loop unrolled by two
        // so that each MMA group reads one set while the other is written. An item has at least one step (the
        // grid's: every split at least a chunk; stream-K's: QkWsWalk::valid), so its first is fetched unconditionally.
        uint32_t a0[KS][4][4], a1[KS][4][4];
        int cs = it.c0;
        fetch(cs, i, a0);
#pragma unroll 1
        while (true) {
          qk_wgmma_issue<Tag, BT, KS>(acc, a0, smem0 + (uint32_t)((i % STAGES) * STAGE_BYTES), cs != it.c0);
          bool more = cs + KS < c1;
          if (more) fetch(cs + KS, i + 1, a1);
          qk_wgmma_wait<0>();
          release(i);
          ++i, cs += KS;
          if (!more) break;
          qk_wgmma_issue<Tag, BT, KS>(acc, a1, smem0 + (uint32_t)((i % STAGES) * STAGE_BYTES));
          more = cs + KS < c1;
          if (more) fetch(cs + KS, i + 1, a0);
          qk_wgmma_wait<0>();
          release(i);
          ++i, cs += KS;
          if (!more) break;
        }
      } else {
#pragma unroll 1
        for (int cs = it.c0; cs < c1; cs += KS, ++i) {
          uint32_t a[KS][4][4];
          fetch(cs, i, a);
          // an item's first: acc =
          qk_wgmma_step<Tag, BT, KS>(acc, a, smem0 + (uint32_t)((i % STAGES) * STAGE_BYTES), cs != it.c0);
          release(i);
        }
      }
      qk_wgmma_hold(acc);
      if (!sk) break;  // the grid's one item: the epilogue below, which the producer warp joins
      // stream-K: a whole tile's sums written out, a part's stored in the workspace (added up after the loop), while
      // the producer already fills the ring with the next item's steps. The item again rather than held through the
      // loop (registers: 128 accumulators at 256 tokens).
      asm volatile("" : "+r"(j));
      qk_ws_item(walk, (int)blockIdx.x, j, chunks_per_split, it);
      // a part of a tile: stored, and the tile's sums written by the block that completes it (qk_ws_sk_fixup)
      if (it.nz > 1 && !qk_ws_sk_fixup<ACC, 32 * QK_WS_CONSUMER_WARPS>(acc, it, ws, counters + it.cell, walk.tiles))
        continue;
      float(&acc4)[1][MT][4] = *reinterpret_cast<float(*)[1][MT][4]>(acc);
      qk_mma_store_out<Tag, 1, MT, GLU>(acc4, it.by * TILES + warp, n_tiles, it.bx * BT, lane, bias, out, M, N);
    }
    if (sk) {
      if (mc > 1) qk_cluster_sync();
      return;
    }
  }
  // The grid's block: every copy has landed (the consumers waited for each stage), so a cluster reduction may reuse
  // the ring. The producer warp (not at REGS: its warpgroup has left) joins with no tile of its own.
  QkWsItem it;
  qk_ws_item(walk, (int)blockIdx.x, 0, chunks_per_split, it);
  float(&acc4)[1][MT][4] = *reinterpret_cast<float(*)[1][MT][4]>(acc);
  if constexpr (!GLU) {
    if (gridDim.z > 1 &&
        qk_ws_cluster_reduce<Tag, MT, 32 * QK_WS_CONSUMER_WARPS>(
            acc4, reinterpret_cast<float*>(const_cast<unsigned char*>(smem0_ptr)), it.by * 128, it.bx * BT, bias, out,
            M, N))
      return;
  }
  qk_mma_epilogue<Tag, 1, MT, GLU>(acc4, producer ? n_tiles : it.by * TILES + warp, n_tiles, it.bx * BT, lane, bias,
                                   out, ws, counters, M, N);
  if (mc > 1) qk_cluster_sync();  // no block leaves while its pair's arrivals may still reach it
#endif
}

// x [M, K] -> out [K / 64][M][64]: row r of chunk c is x[r, k(64c) .. k(64c + 63)], k the order of act-order and the
// MMA (PackedLinear.wgmma_x_index), with its 16-byte unit u stored at u ^ (r % 8), the image of the kernel's
// 128B-swizzled tile, so that one bulk copy brings a chunk's rows of a token tile. WORDS: index (int32 [K / 2]) gives
// each pair of k its 32-bit word of x's row (k(2i + 1) = k(2i) + 1 with k(2i) even, as without act-order: one load a
// word); else index (int32 [K]) gives each k (two loads a word). A 16-byte unit of QK_PACK_ROWS rows 8 apart a thread
// (the same swizzle: one index load, then every row's loads in flight), grid-stride, 8 threads a row's 128 bytes.
constexpr int QK_PACK_ROWS = 4;
template <bool WORDS>
QK_GLOBAL void qk_wgmma_pack_x(const uint16_t* __restrict__ x, const int32_t* __restrict__ index,
                               uint4* __restrict__ out, int M, int K);
// The same image without act-order, in the fixed order of the MMA (no index), x 16-byte aligned: a warp moves
// QK_PACK_ROWS x 4 rows of a chunk, a row's 128 bytes by 8 lanes in one 16-byte load each (every row's in flight),
// and regroups their words into the logical units through a staging tile in shared memory, so that both its loads
// and its stores are whole 512-byte runs (the indexed kernels read x a word or a k at a time).
QK_GLOBAL void __launch_bounds__(256) qk_wgmma_pack_x_plain(const uint16_t* __restrict__ x, uint4* __restrict__ out,
                                                             int M, int K);

#endif  // QK_IS_CUDA
