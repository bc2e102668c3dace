// w4a16_wgmma_cuda.h — the Hopper (sm_90a) prefill kernel: warpgroup MMA (wgmma.mma_async) with the
// dequantized weights as the register A operand and the activations as the shared-memory B operand. CUDA only.
//
// Same transposed product as w4a16_mma_cuda.h (out^T = W x^T) over the same "mma" weight layout: warp w of a
// warpgroup owns one 16-row tile, and the 16-byte word group a lane loads per 64-k chunk is exactly its
// m16n8k16-style A fragments for four k16 steps, which is also the register A layout of wgmma m64nNk16 (warp w
// supplies rows 16w..16w+15). The tile's fragments put physical k in a permuted order inside each 64-k chunk
// (see w4a16_mma_cuda.h); B must follow the same order, so the caller passes x with each 64-k chunk already
// permuted to the MMA's logical k order (quantkit.kernels.ops.wgmma_x_order), which lets x go to shared memory
// by plain 16-byte cp.async copies.
//
// Block: 2 warpgroups (256 threads) x 64 rows = 128 output features, BT tokens (the wgmma N: 64, 128 or 256).
// x tile per chunk: BT rows x 128 bytes, 128-byte swizzled (16-byte unit u of row r at unit u ^ (r % 8)),
// STAGES deep through cp.async groups. Per chunk each warpgroup dequantizes its 4 x 4 A registers (prefetched
// PF chunks ahead from global) and issues 4 wgmma (one per k16 step, the descriptor advanced 32 bytes each),
// then waits for them; the other warpgroup (and a second block where registers allow) fills that time.
// Split-K and the epilogue are w4a16_mma_cuda.h's (the wgmma accumulator layout of warp w equals the mma.sync
// C layout of tile 16w).
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

// Shared memory the kernel needs for BT tokens and STAGES stages (plus slack to align the base to 1024 bytes).
constexpr int qk_wgmma_smem_bytes(int bt, int stages) { return bt * 128 * stages + 1024; }

QK_INLINE uint32_t qk_smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// 16-byte global -> shared copy, zero-filled when !valid (rows past M).
QK_INLINE void qk_cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
QK_INLINE void qk_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
QK_INLINE void qk_cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
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
#endif

// grid x = ceil(M / BT) token tiles, y = ceil(N / 128), z = split-K. x is in wgmma k order (see top).
template <typename Tag, int BT, bool SYM, int STAGES>
QK_GLOBAL void __launch_bounds__(QK_WGMMA_THREADS, 1)
    qk_wgmma_gemm(const uint16_t* __restrict__ x, const uint4* __restrict__ w, const uint16_t* __restrict__ meta,
                  const uint16_t* __restrict__ bias, uint16_t* __restrict__ out, float* __restrict__ ws,
                  int* __restrict__ counters, int M, int N, int K, int group_size, int chunks_per_split) {
#if QK_HAS_WGMMA
  static_assert(STAGES >= 2, "the load of chunk i + STAGES - 1 reuses the stage of chunk i - 1");
  constexpr int ACC = BT / 2, MT = BT / 8;
  constexpr int PF = BT >= 256 ? 2 : 4;  // chunks of weights in flight per thread (registers allowing)
  extern __shared__ unsigned char qk_dyn_smem[];
  const uint32_t smem0 = (qk_smem_addr(qk_dyn_smem) + 1023) & ~1023u;

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int gid = lane / 4, tig = lane % 4;
  const int n_tiles = N / 16, tile = blockIdx.y * (QK_WGMMA_ROWS / 16) + warp;
  const bool live = tile < n_tiles;  // dead warps still take part in their warpgroup's wgmma, with zero weights
  const int m0 = blockIdx.x * BT;
  const int chunks = K / 64, groups = K / group_size;
  const int c0 = blockIdx.z * chunks_per_split, c1 = min(chunks, c0 + chunks_per_split);
  const int n_chunks = max(0, c1 - c0);

  // x stage loader: BT rows x 8 units of 16 bytes, every thread BT * 8 / 256 of them.
  auto load_x = [&](int i) {
    if (i < n_chunks) {
      const uint32_t base = smem0 + (uint32_t)((i % STAGES) * BT * 128);
      const int c = c0 + i;
#pragma unroll
      for (int v = 0; v < BT * 8 / QK_WGMMA_THREADS; ++v) {
        const int idx = v * QK_WGMMA_THREADS + threadIdx.x, r = idx / 8, u = idx % 8;
        const int tok = m0 + r;
        const uint16_t* src = x + (size_t)min(tok, M - 1) * K + (size_t)c * 64 + u * 8;
        qk_cp_async16(base + r * 128 + ((u ^ (r & 7)) << 4), src, tok < M);
      }
    }
    qk_cp_async_commit();  // one group per chunk, empty past the end, so the wait count stays uniform
  };
  const uint4* wt = w + (size_t)(live ? tile : 0) * chunks * 32 + lane;
  const size_t meta_row = (size_t)(live ? tile : 0) * groups * 8 + gid;
  auto load_w = [&](int i, uint4& wv, uint32_t& s_lo, uint32_t& s_hi, uint32_t& z_lo, uint32_t& z_hi) {
    if (live && i < n_chunks) {
      const int c = c0 + i;
      wv = qk_ld_stream(wt + (size_t)c * 32);
      qk_mma_meta<Tag, SYM>(meta, meta_row + (size_t)((64 * c + 16 * tig) / group_size) * 8, s_lo, s_hi, z_lo, z_hi);
    } else {
      wv = make_uint4(0, 0, 0, 0);
      s_lo = s_hi = 0;
      z_lo = z_hi = QkMagic<Tag>::pair;
    }
  };

  float acc[ACC];
#pragma unroll
  for (int i = 0; i < ACC; ++i) acc[i] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) load_x(s);
  uint4 wq[PF];
  uint32_t ms[PF][4];
#pragma unroll
  for (int p = 0; p < PF; ++p) load_w(p, wq[p], ms[p][0], ms[p][1], ms[p][2], ms[p][3]);

  // One chunk: wait for its x stage, refill the stage of chunk i - 1, dequantize, issue 4 wgmma, wait for them.
  // (Waiting here costs little: the block's other warpgroup, and a second block on the SM, dequantize while these
  // MMAs run. Leaving them in flight across the next dequantization makes ptxas serialize them anyway, C7513.)
  auto step = [&](int i, uint4& wv, uint32_t(&m)[4]) {
    qk_cp_async_wait<STAGES - 2>();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();  // every warpgroup is done with chunk i - 1: its stage is free
    load_x(i + STAGES - 1);
    uint32_t a[4][4];  // [k16 step][register]
    const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r)
        a[j][r] = QkMma<Tag>::dequant(qk_magic_pair<Tag>(words[j], r), (r & 1) ? m[3] : m[2], (r & 1) ? m[1] : m[0]);
    load_w(i + PF, wv, m[0], m[1], m[2], m[3]);
    const uint64_t desc = qk_wgmma_desc(smem0 + (uint32_t)((i % STAGES) * BT * 128));
    qk_wgmma_fence();
#pragma unroll
    for (int j = 0; j < 4; ++j) QkWgmma<Tag, BT>::mma(acc, a[j], desc + 2 * j, 1);  // +32 bytes per k16 step
    qk_wgmma_commit();
    qk_wgmma_wait<0>();
  };
  for (int i = 0; i < n_chunks; i += PF) {
#pragma unroll
    for (int p = 0; p < PF; ++p)
      if (i + p < n_chunks) step(i + p, wq[p], ms[p]);  // p is a constant: the registers stay registers
  }
  qk_wgmma_wait<0>();
  qk_wgmma_hold(acc);
  qk_cp_async_wait<0>();

  float(&acc4)[1][MT][4] = *reinterpret_cast<float(*)[1][MT][4]>(acc);
  qk_mma_epilogue<Tag, 1, MT>(acc4, tile, n_tiles, m0, lane, bias, out, ws, counters, M, N);
#endif
}

#endif  // QK_IS_CUDA
