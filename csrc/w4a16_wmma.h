// w4a16_wmma.h — the RDNA3 prefill kernel (docs/formats.md §2): v_wmma_f32_16x16x16_{f16,bf16}_w32 on gfx11.
// One source for both platforms: the instruction is platform.h's qk_wmma16, which on CUDA is a stand-in with the
// same lane layout (warp shuffles and fp32 FMAs), so that this kernel's indexing, dequantization, split-K and
// epilogue are checked on NVIDIA hardware too (the NVIDIA prefill paths are w4a16_mma_cuda.h and
// w4a16_wgmma*_cuda.h).
//
// Reads the same "dot2" layout as w4a16_dot2.h (shuffled qweight [K/8, N], scales T [G, N], zeros uint8 [G, N]).
// Block: 4 waves (128 threads) as 2 (M) x 2 (N); a wave owns 16 rows of M x 32 columns of N (two 16x16 tiles),
// the block 32 x 64. Grid: x = ceil(N / 64), y = ceil(M / 32), z = split-K (k_split a multiple of the group size
// and 16). With z > 1 the output must be zero on entry and splits add into it by 32-bit CAS.
//
// gfx11 wave32 WMMA operands: lane l holds row (l % 16) of A and column (l % 16) of B as 16 values along K
// (lanes 16..31 repeat lanes 0..15); result element i of lane l is row 2i + l/16, column l % 16.
#pragma once

#include "w4a16_common.h"

#define QK_WMMA_THREADS 128

// Weights of one 16-k slice of column n as the B operand (8 pairs along k: word w0 holds k 0..7, w1 k 8..15, pair p
// of a word at nibbles p and p + 4), bit-identical to the reference dequant.
QK_INLINE void qk_wmma_b(uint32_t w0, uint32_t w1, float s, float z, uint32_t (&b)[8], QkF16) {
  const uint32_t z2 = qk_splat(qk_float_to_bits(1024.f + z, QkF16())), s2 = qk_splat(qk_float_to_bits(s, QkF16()));
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    b[p] = qk_sub_mul2(qk_magic_pair<QkF16>(w0, p), z2, s2);
    b[4 + p] = qk_sub_mul2(qk_magic_pair<QkF16>(w1, p), z2, s2);
  }
}

// gfx11 has no packed bf16 arithmetic: (q - zero) is exact in fp32 and one rounding gives the bf16 weight.
QK_INLINE uint32_t qk_wmma_bf16_pair(uint32_t w, int p, float s, float z) {
  return (uint32_t)qk_float_to_bits(((float)((w >> (4 * p)) & 15u) - z) * s, QkBF16()) |
         (uint32_t)qk_float_to_bits(((float)((w >> (4 * p + 16)) & 15u) - z) * s, QkBF16()) << 16;
}
QK_INLINE void qk_wmma_b(uint32_t w0, uint32_t w1, float s, float z, uint32_t (&b)[8], QkBF16) {
#pragma unroll
  for (int p = 0; p < 4; ++p) b[p] = qk_wmma_bf16_pair(w0, p, s, z), b[4 + p] = qk_wmma_bf16_pair(w1, p, s, z);
}

template <typename Tag, bool SYM>
QK_GLOBAL void __launch_bounds__(QK_WMMA_THREADS)
    qk_wmma_prefill(const uint16_t* __restrict__ x, const uint32_t* __restrict__ qweight,
                    const uint16_t* __restrict__ scales, const uint8_t* __restrict__ zeros,
                    const uint16_t* __restrict__ bias, uint16_t* __restrict__ out, int M, int N, int K,
                    int group_size, int k_split) {
  const int lane = qk_thread_x() % 32, wave = qk_thread_x() / 32;
  const int m0 = qk_block_y() * 32 + (wave / 2) * 16;
  const int n0 = qk_block_x() * 64 + (wave % 2) * 32;
  const int k0 = qk_block_z() * k_split, k1 = min(K, k0 + k_split);
  const int row = m0 + lane % 16;
  const bool row_ok = row < M;
  float acc[2][8] = {};

  for (int k = k0; k < k1; k += 16) {
    uint32_t a[8] = {};
    if (row_ok) {
      const uint4* src = reinterpret_cast<const uint4*>(x + (size_t)row * K + k);
      const uint4 lo = src[0], hi = src[1];
      a[0] = lo.x, a[1] = lo.y, a[2] = lo.z, a[3] = lo.w, a[4] = hi.x, a[5] = hi.y, a[6] = hi.z, a[7] = hi.w;
    }
    const int g = k / group_size;
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      if (n0 + t * 16 >= N) continue;  // wave-uniform: N is a multiple of 16
      const int n = n0 + t * 16 + lane % 16;
      const uint32_t w0 = qweight[(size_t)(k / 8) * N + n], w1 = qweight[(size_t)(k / 8 + 1) * N + n];
      const float s = qk_bits_to_float(scales[(size_t)g * N + n], Tag());
      const float z = SYM ? 8.f : (float)zeros[(size_t)g * N + n];
      uint32_t b[8];
      qk_wmma_b(w0, w1, s, z, b, Tag());
      qk_wmma16(acc[t], a, b, Tag());
    }
  }

#pragma unroll
  for (int t = 0; t < 2; ++t) {
    if (n0 + t * 16 >= N) continue;
    const int n = n0 + t * 16 + lane % 16;
    const float b = (bias != nullptr && qk_block_z() == 0) ? qk_bits_to_float(bias[n], Tag()) : 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int m = m0 + 2 * i + lane / 16;
      if (m >= M) continue;
      if (qk_grid_z() == 1)
        out[(size_t)m * N + n] = qk_float_to_bits(acc[t][i] + b, Tag());
      else
        qk_atomic_add1<Tag>(out + (size_t)m * N + n, acc[t][i] + b);
    }
  }
}
