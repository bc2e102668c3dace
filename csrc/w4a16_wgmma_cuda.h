// w4a16_wgmma_cuda.h — the Hopper (sm_90a) prefill kernel: warpgroup MMA (wgmma.mma_async) with the
// dequantized weights as the register A operand and the activations as the shared-memory B operand. CUDA only.
//
// Same transposed product as w4a16_mma_cuda.h (out^T = W x^T) over the same "mma" weight layout: warp w of a
// warpgroup owns one 16-row tile, and the 16-byte word group a lane loads per 64-k chunk is exactly its
// m16n8k16-style A fragments for four k16 steps, which is also the register A layout of wgmma m64nNk16 (warp w
// supplies rows 16w..16w+15). The tile's fragments put physical k in a permuted order inside each 64-k chunk
// (see w4a16_mma_cuda.h); B must follow the same order, so the caller passes x with each 64-k chunk already
// permuted to the MMA's logical k order (quantkit.kernels.packing.PackedLinear.wgmma_x_index), which lets x go
// to shared memory by plain 16-byte cp.async copies.
//
// Block: 2 warpgroups (256 threads) x 64 rows = 128 output features, BT tokens (the wgmma N: 64, 128 or 256).
// x tile per chunk: BT rows x 128 bytes, 128-byte swizzled (16-byte unit u of row r at unit u ^ (r % 8)),
// STAGES steps of KS chunks deep through cp.async groups. Per step each warpgroup dequantizes its KS x 4 x 4 A
// registers (loaded one step ahead from global) and issues 4 KS wgmma (one per k16 step, the descriptor
// advanced 32 bytes each), then waits for them; the other warpgroup (and a second block where registers allow)
// fills that time.
// Split-K and the epilogue are w4a16_mma_cuda.h's (the wgmma accumulator layout of warp w equals the mma.sync
// C layout of tile 16w); a cluster reduction keeps the block's sums in the stage ring.
#pragma once

#include "w4a16_mma_cuda.h"
#include "w4a16_wgmma_ops.h"

#if QK_IS_CUDA && defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define QK_HAS_WGMMA 1
#else
#define QK_HAS_WGMMA 0
#endif

#if QK_IS_CUDA

#define QK_WGMMA_THREADS 256
#define QK_WGMMA_ROWS 128  // output features per block

// Shared memory of one stage: x (KS sub-tiles of BT rows x 128 bytes) and, when the weights go through shared memory
// (wsm), the step's weights (KS chunks x 8 warps x 512 bytes) and scales (KS x 256 threads x 4 bytes, 8 asymmetric).
// Every stage starts 1024-byte aligned (the 128-byte swizzle repeats every 1024 bytes).
__host__ __device__ constexpr int qk_wgmma_stage_bytes(int bt, int ks, bool wsm, bool sym) {
  return ks * bt * 128 + (wsm ? ks * (8 * 512 + QK_WGMMA_THREADS * (sym ? 4 : 8)) : 0);
}
// The whole ring, plus slack to align its base to 1024 bytes.
__host__ __device__ constexpr int qk_wgmma_smem_bytes(int bt, int stages, int ks, bool wsm, bool sym) {
  return qk_wgmma_stage_bytes(bt, ks, wsm, sym) * stages + 1024;
}


// Matrix descriptor of a K-major, 128-byte swizzled B tile: start address, leading offset (unused for swizzled
// K-major; 1 by convention), stride 1024 bytes between 8-row core-matrix groups, layout type 1 (128B swizzle).
QK_INLINE uint64_t qk_wgmma_desc(uint32_t smem_addr) {
  return (uint64_t)((smem_addr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
         ((uint64_t)1 << 62);
}

#if QK_HAS_WGMMA
QK_INLINE void qk_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
QK_INLINE void qk_wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
QK_INLINE void qk_wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keep the compiler from moving accumulator reads/writes across the asynchronous MMAs.
template <int R>
QK_INLINE void qk_wgmma_hold(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// One step of a warpgroup: 4 KS wgmma (one per k16 step of each of KS chunks) of its A registers against the x tile
// at stage (KS sub-tiles of BT rows x 128 bytes), committed as one group, not waited for. accumulate 0: the first
// overwrites acc.
template <typename Tag, int BT, int KS>
QK_INLINE void qk_wgmma_issue(float (&acc)[BT / 2], const uint32_t (&a)[KS][4][4], uint32_t stage, int accumulate = 1) {
  // Each MMA's descriptor is the stage's advanced by its tile's offset: only the low word (the start address / 16, 14
  // bits; a tile inside shared memory never carries out of it) changes, so a 32-bit add and the same high word, not a
  // 64-bit add and its register moves (7 instructions an MMA in the 32-token kernel's SASS before, 3 after).
  const uint64_t desc = qk_wgmma_desc(stage);
  const uint32_t lo = (uint32_t)desc, hi = (uint32_t)(desc >> 32);
  qk_wgmma_fence();
#pragma unroll
  for (int q = 0; q < KS; ++q)
#pragma unroll
    for (int j = 0; j < 4; ++j) {  // +32 bytes per k16 step, +BT*128 bytes per chunk (descriptor units of 16 bytes)
      uint64_t d;
      asm("mov.b64 %0, {%1, %2};\n" : "=l"(d) : "r"(lo + (uint32_t)(q * BT * 8 + 2 * j)), "r"(hi));
      QkWgmma<Tag, BT>::mma(acc, a[q][j], d, q == 0 && j == 0 ? accumulate : 1);
    }
  qk_wgmma_commit();
}
// The same, then a wait for them.
template <typename Tag, int BT, int KS>
QK_INLINE void qk_wgmma_step(float (&acc)[BT / 2], const uint32_t (&a)[KS][4][4], uint32_t stage, int accumulate = 1) {
  qk_wgmma_issue<Tag, BT, KS>(acc, a, stage, accumulate);
  qk_wgmma_wait<0>();
}
#endif

// The wgmma A registers of KS chunks, [chunk][k16 step][register], from a thread's 16 weight bytes and raw scales
// (qk_mma_meta_load) of each chunk.
template <typename Tag, bool SYM, int KS>
QK_INLINE void qk_wgmma_dequant(const uint4 (&wv)[KS], const uint2 (&mv)[KS], uint32_t (&a)[KS][4][4]) {
#pragma unroll
  for (int q = 0; q < KS; ++q) {
    uint32_t s_lo, s_hi, z_lo, z_hi;
    qk_mma_meta_unpack<Tag, SYM>(mv[q], s_lo, s_hi, z_lo, z_hi);
    const uint32_t words[4] = {wv[q].x, wv[q].y, wv[q].z, wv[q].w};
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r)
        a[q][j][r] = QkMma<Tag>::dequant(qk_magic_pair<Tag>(words[j], r), (r & 1) ? z_hi : z_lo, (r & 1) ? s_hi : s_lo);
  }
}

// grid x = ceil(M / BT) token tiles, y = ceil(N / 128), z = split-K. x is in wgmma k order (see top).
// KS: 64-k chunks per step (one barrier and one wgmma wait; a stage holds KS chunks, 4 KS MMAs in flight per
// warpgroup); MINB: blocks per multiprocessor the registers must allow
// (2 halves the registers a thread may use, so that two blocks' warpgroups interleave their dequantization);
// WSM: the weights and scales travel with x through the shared-memory stages (cp.async, STAGES - 1 steps ahead; each
// thread copies and later reads back its own 16 + 4 or 8 bytes a chunk), instead of one step ahead in registers.
template <typename Tag, int BT, bool SYM, int STAGES, int KS, int MINB, bool WSM = false>
QK_GLOBAL void __launch_bounds__(QK_WGMMA_THREADS, MINB)
    qk_wgmma_gemm(const uint16_t* __restrict__ x, const uint4* __restrict__ w, const uint16_t* __restrict__ meta,
                  const uint16_t* __restrict__ bias, uint16_t* __restrict__ out, float* __restrict__ ws,
                  int* __restrict__ counters, int M, int N, int K, int group_size, int chunks_per_split) {
#if QK_HAS_WGMMA
  static_assert(STAGES >= 2, "the load of step i + STAGES - 1 reuses the stage of step i - 1");
  constexpr int ACC = BT / 2, MT = BT / 8;
  constexpr int X_BYTES = KS * BT * 128, W_BYTES = KS * 8 * 512, MV = SYM ? 4 : 8;
  constexpr int STAGE_BYTES = qk_wgmma_stage_bytes(BT, KS, WSM, SYM);
  static_assert(STAGE_BYTES == X_BYTES + (WSM ? W_BYTES + KS * QK_WGMMA_THREADS * MV : 0),
                "qk_wgmma_stage_bytes must match the stage layout below (x, then weights, then scales)");
  extern __shared__ unsigned char qk_dyn_smem[];
  const uint32_t smem0 = (qk_smem_addr(qk_dyn_smem) + 1023) & ~1023u;
  const unsigned char* smem0_ptr = qk_dyn_smem + (smem0 - qk_smem_addr(qk_dyn_smem));

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int gid = lane / 4, tig = lane % 4;
  const int n_tiles = N / 16, tile = blockIdx.y * (QK_WGMMA_ROWS / 16) + warp;
  const bool live = tile < n_tiles;  // dead warps still take part in their warpgroup's wgmma, with zero weights
  const int m0 = blockIdx.x * BT;
  const int chunks = K / 64, groups = K / group_size;
  const int c0 = blockIdx.z * chunks_per_split, c1 = min(chunks, c0 + chunks_per_split);
  const int n_chunks = max(0, c1 - c0), n_steps = (n_chunks + KS - 1) / KS;
  const QkGroupOf group_of(group_size, tig);
  const uint4* wt = w + (size_t)(live ? tile : 0) * chunks * 32 + lane;
  const size_t meta_row = (size_t)(live ? tile : 0) * groups * 8 + gid;

  // Stage of step i: x as KS sub-tiles of BT rows x 128 bytes (each a 128B-swizzled K-major tile), 16-byte cp.async
  // units; with WSM also this thread's weights and scales of the step's chunks, zero past the range and for dead
  // warps (scale 0 makes a zero weight).
  auto load_stage = [&](int i) {
    if (i < n_steps) {
      const uint32_t base = smem0 + (uint32_t)((i % STAGES) * STAGE_BYTES);
#pragma unroll
      for (int v = 0; v < KS * BT * 8 / QK_WGMMA_THREADS; ++v) {
        const int idx = v * QK_WGMMA_THREADS + threadIdx.x, q = idx / (BT * 8), r = (idx / 8) % BT, u = idx % 8;
        const int tok = m0 + r, c = c0 + i * KS + q;
        const uint16_t* src = x + (size_t)min(tok, M - 1) * K + (size_t)min(c, chunks - 1) * 64 + u * 8;
        qk_cp_async16(base + q * BT * 128 + r * 128 + ((u ^ (r & 7)) << 4), src, tok < M && c < c1);
      }
      if constexpr (WSM) {
#pragma unroll
        for (int q = 0; q < KS; ++q) {
          const int c = c0 + i * KS + q, cc = min(c, chunks - 1);
          const bool ok = live && c < c1;
          qk_cp_async16(base + X_BYTES + (q * 8 + warp) * 512 + lane * 16, wt + (size_t)cc * 32, ok);
          qk_cp_async_small<MV>(base + X_BYTES + W_BYTES + (q * QK_WGMMA_THREADS + threadIdx.x) * MV,
                                reinterpret_cast<const unsigned char*>(meta) + (meta_row + (size_t)group_of(cc) * 8) * MV,
                                ok);
        }
      }
    }
    qk_cp_async_commit();  // one group per step, empty past the end, so the wait count stays uniform
  };
  // Without WSM: step i's weights and scales straight into registers (issued one step ahead).
  auto load_w = [&](int i, uint4(&wv)[KS], uint2(&mv)[KS]) {
#pragma unroll
    for (int q = 0; q < KS; ++q) {
      const int c = c0 + i * KS + q;
      if (live && c < c1) {
        wv[q] = qk_ld_stream(wt + (size_t)c * 32);
        mv[q] = qk_mma_meta_load<SYM>(meta, meta_row + (size_t)group_of(c) * 8);
      } else {  // zero weights: scale 0 (and zero = magic when asymmetric)
        wv[q] = make_uint4(0, 0, 0, 0);
        mv[q] = make_uint2(0u, QkMagic<Tag>::pair);
      }
    }
  };
  // With WSM: step i's weights and scales from its stage (this thread's own copies).
  auto read_w = [&](int i, uint4(&wv)[KS], uint2(&mv)[KS]) {
    const unsigned char* base = smem0_ptr + (i % STAGES) * STAGE_BYTES;
#pragma unroll
    for (int q = 0; q < KS; ++q) {
      wv[q] = *reinterpret_cast<const uint4*>(base + X_BYTES + (q * 8 + warp) * 512 + lane * 16);
      const unsigned char* m = base + X_BYTES + W_BYTES + (q * QK_WGMMA_THREADS + threadIdx.x) * MV;
      mv[q] = SYM ? make_uint2(*reinterpret_cast<const uint32_t*>(m), 0u) : *reinterpret_cast<const uint2*>(m);
    }
  };
  // Wait for step i's stage and refill the stage of step i - 1 (every warpgroup is done with it).
  auto next_stage = [&](int i) {
    qk_cp_async_wait<STAGES - 2>();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    load_stage(i + STAGES - 1);
  };

  float acc[ACC];
#pragma unroll
  for (int i = 0; i < ACC; ++i) acc[i] = 0.f;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) load_stage(s);
  uint4 wq[KS];
  uint2 mq[KS];
  if constexpr (!WSM) load_w(0, wq, mq);

  // One step: wait for its stage (and refill the one before), dequantize KS chunks (without WSM, then request the
  // next step's weights into the same registers), issue 4 KS wgmma, wait for them. (Leaving MMAs in flight across
  // the next dequantization makes ptxas serialize them anyway, C7513; the other warpgroup fills that time.)
  for (int i = 0; i < n_steps; ++i) {
    next_stage(i);
    uint32_t a[KS][4][4];
    if constexpr (WSM) read_w(i, wq, mq);
    qk_wgmma_dequant<Tag, SYM>(wq, mq, a);
    if constexpr (!WSM) load_w(i + 1, wq, mq);
    qk_wgmma_step<Tag, BT, KS>(acc, a, smem0 + (uint32_t)((i % STAGES) * STAGE_BYTES));
  }
  qk_wgmma_hold(acc);
  qk_cp_async_wait<0>();

  // A cluster split-K reduction reuses the stage ring for the block's sums (8 warps x BT / 8 x 512 bytes).
  static_assert(STAGES * STAGE_BYTES >= BT * 512, "the stage ring must hold the block's fp32 sums");
  float(&acc4)[1][MT][4] = *reinterpret_cast<float(*)[1][MT][4]>(acc);
  const QkClusterTile ct{reinterpret_cast<float*>(const_cast<unsigned char*>(smem0_ptr)),
                         (int)blockIdx.y * (QK_WGMMA_ROWS / 16), QK_WGMMA_THREADS / 32};
  qk_mma_epilogue<Tag, 1, MT>(acc4, tile, n_tiles, m0, lane, bias, out, ws, counters, M, N, ct);
#endif
}

#endif  // QK_IS_CUDA
