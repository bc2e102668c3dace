// w4a16_dot2.h — the small-M decode kernel of docs/formats.md §2, one source for HIP (gfx11) and CUDA.
//
// Layout it reads ("dot2" layout, built by quantkit.kernels.packing.repack_dot2):
//   qweight  int32 [K/8, N]  the GPTQ qweight with the exllama shuffle inside each word: nibbles
//                            q0 q2 q4 q6 in bits 0..15 and q1 q3 q5 q7 in bits 16..31, so that
//                            (w >> 4p) & 0x000F000F holds the pair (k = 8i+2p, 8i+2p+1).
//   scales   T [G, N]        one scale per group and column, in the activation type T.
//   zeros    uint8 [G, N]    the true zero point (read only when SYM is false; SYM means zero = 8).
//   x        T [M, K]        activations, rows contiguous, already permuted for act-order.
//   bias     T [N] or null   added once (by the blocks of split 0).
//   out      T [M, N]        when the grid has more than one split (z) it must be zero on entry: splits add into it.
// Grid: x = ceil(N / 1024) (256 threads x 4 adjacent columns), z = ceil(K / k_split); k_split is a multiple of
// the group size, at most QK_DOT2_KSPLIT. Per group: part = sum a*(magic+q) with v_dot2_f32_{f16,bf16},
// sum_a = dot2(a, (1,1)); then out += scale*part - (magic+zero)*scale*sum_a (exact algebra, fp32).
#pragma once

#include "w4a16_common.h"

#define QK_DOT2_THREADS 256
#define QK_DOT2_KSPLIT 256

template <typename Tag, int MR, bool SYM>
QK_GLOBAL void __launch_bounds__(QK_DOT2_THREADS)
    qk_dot2_decode(const uint16_t* __restrict__ x, const uint32_t* __restrict__ qweight,
                   const uint16_t* __restrict__ scales, const uint8_t* __restrict__ zeros,
                   const uint16_t* __restrict__ bias, uint16_t* __restrict__ out, int M, int N, int K,
                   int group_size, int k_split) {
  __shared__ uint32_t xs[MR][QK_DOT2_KSPLIT / 2];
  const int n = (qk_block_x() * QK_DOT2_THREADS + qk_thread_x()) * 4;
  const int k0 = qk_block_z() * k_split;
  const int k1 = min(K, k0 + k_split);
  const int pairs = (k1 - k0) / 2;

  // Stage this split's activations as 32-bit pairs; rows past M are zero.
  const uint32_t* x32 = reinterpret_cast<const uint32_t*>(x);
  for (int i = qk_thread_x(); i < MR * pairs; i += QK_DOT2_THREADS) {
    const int m = i / pairs, p = i - m * pairs;
    xs[m][p] = m < M ? x32[((size_t)m * K + k0) / 2 + p] : 0u;
  }
  qk_sync();
  if (n >= N) return;

  float acc[MR][4];
#pragma unroll
  for (int m = 0; m < MR; ++m)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[m][c] = 0.f;

  for (int kg = k0; kg < k1; kg += group_size) {
    float part[MR][4], suma[MR];
#pragma unroll
    for (int m = 0; m < MR; ++m) {
      suma[m] = 0.f;
#pragma unroll
      for (int c = 0; c < 4; ++c) part[m][c] = 0.f;
    }
#pragma unroll 2
    for (int r = kg / 8; r < (kg + group_size) / 8; ++r) {
      const uint4 w4 = *reinterpret_cast<const uint4*>(qweight + (size_t)r * N + n);
      const uint32_t w[4] = {w4.x, w4.y, w4.z, w4.w};
      const int xo = (r * 8 - k0) / 2;
#pragma unroll
      for (int p = 0; p < 4; ++p) {
#pragma unroll
        for (int m = 0; m < MR; ++m) {
          const uint32_t a = xs[m][xo + p];
          suma[m] = qk_dot2(a, QkMagic<Tag>::one_pair, suma[m], Tag());
#pragma unroll
          for (int c = 0; c < 4; ++c) part[m][c] = qk_dot2(a, qk_magic_pair<Tag>(w[c], p), part[m][c], Tag());
        }
      }
    }
    const int g = kg / group_size;
    float s[4], zs[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      s[c] = qk_bits_to_float(scales[(size_t)g * N + n + c], Tag());
      const float z = SYM ? 8.f : (float)zeros[(size_t)g * N + n + c];
      zs[c] = (QkMagic<Tag>::bias + z) * s[c];
    }
#pragma unroll
    for (int m = 0; m < MR; ++m)
#pragma unroll
      // one rounded product (scale * part exact inside the FMA), written out so that every platform's compiler
      // computes the same bits rather than contracting it its own way
      for (int c = 0; c < 4; ++c) acc[m][c] += fmaf(s[c], part[m][c], -zs[c] * suma[m]);
  }

  float b[4] = {0.f, 0.f, 0.f, 0.f};
  if (bias != nullptr && qk_block_z() == 0)
#pragma unroll
    for (int c = 0; c < 4; ++c) b[c] = qk_bits_to_float(bias[n + c], Tag());
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    if (m >= M) break;
    float v[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) v[c] = acc[m][c] + b[c];
    uint16_t* o = out + (size_t)m * N + n;
    if (qk_grid_z() == 1) {
      uint2 packed;
      packed.x = (uint32_t)qk_float_to_bits(v[0], Tag()) | ((uint32_t)qk_float_to_bits(v[1], Tag()) << 16);
      packed.y = (uint32_t)qk_float_to_bits(v[2], Tag()) | ((uint32_t)qk_float_to_bits(v[3], Tag()) << 16);
      *reinterpret_cast<uint2*>(o) = packed;
    } else {
      qk_atomic_add4<Tag>(o, v);
    }
  }
}
