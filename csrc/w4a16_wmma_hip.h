// w4a16_wmma_hip.h — the RDNA3 prefill kernel (docs/formats.md §2): v_wmma_f32_16x16x16_{f16,bf16}_w32.
// HIP only: WMMA is gfx11's matrix instruction; CUDA's prefill path is w4a16_mma_cuda.h.
//
// Reads the same "dot2" layout as w4a16_dot2.h (shuffled qweight [K/8, N], scales T [G, N], zeros uint8 [G, N]).
// Block: 4 waves (128 threads) as 2 (M) x 2 (N); a wave owns 16 rows of M x 32 columns of N (two 16x16 tiles),
// the block 32 x 64. Grid: x = ceil(N / 64), y = ceil(M / 32), z = split-K (1, 2 or 4; k_split a multiple of the
// group size and 16). With z > 1 the output must be zero on entry and splits add into it by 32-bit CAS.
//
// gfx11 wave32 WMMA operands: lane l holds row (l % 16) of A and column (l % 16) of B as 16 values along K
// (lanes 16..31 repeat lanes 0..15); result element i of lane l is row 2i + l/16, column l % 16.
#pragma once

#include "w4a16_common.h"

#if QK_IS_HIP

#define QK_WMMA_THREADS 128

// Weights of one 16-k slice of column n as the B operand: 16 values, bit-identical to the reference dequant.
QK_INLINE qk_half16v qk_wmma_b(uint32_t w0, uint32_t w1, float s, float z, QkF16) {
  const qk_half2v z2 = {(_Float16)(1024.f + z), (_Float16)(1024.f + z)};
  const qk_half2v s2 = {(_Float16)s, (_Float16)s};
  qk_half16v b;
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    qk_half2v lo = (__builtin_bit_cast(qk_half2v, qk_magic_pair<QkF16>(w0, p)) - z2) * s2;
    qk_half2v hi = (__builtin_bit_cast(qk_half2v, qk_magic_pair<QkF16>(w1, p)) - z2) * s2;
    b[2 * p] = lo.x, b[2 * p + 1] = lo.y, b[8 + 2 * p] = hi.x, b[8 + 2 * p + 1] = hi.y;
  }
  return b;
}

// gfx11 has no packed bf16 arithmetic: (q - zero) is exact in fp32 and one rounding gives the bf16 weight.
QK_INLINE qk_bf1616v qk_wmma_b(uint32_t w0, uint32_t w1, float s, float z, QkBF16) {
  qk_bf1616v b;
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    b[2 * p] = (short)qk_float_to_bits(((float)((w0 >> (4 * p)) & 15u) - z) * s, QkBF16());
    b[2 * p + 1] = (short)qk_float_to_bits(((float)((w0 >> (4 * p + 16)) & 15u) - z) * s, QkBF16());
    b[8 + 2 * p] = (short)qk_float_to_bits(((float)((w1 >> (4 * p)) & 15u) - z) * s, QkBF16());
    b[8 + 2 * p + 1] = (short)qk_float_to_bits(((float)((w1 >> (4 * p + 16)) & 15u) - z) * s, QkBF16());
  }
  return b;
}

template <typename Tag>
struct QkWmmaTypes;
template <>
struct QkWmmaTypes<QkF16> {
  typedef qk_half16v vec;
  static QK_INLINE qk_float8v mma(vec a, vec b, qk_float8v c) {
    return __builtin_amdgcn_wmma_f32_16x16x16_f16_w32(a, b, c);
  }
};
template <>
struct QkWmmaTypes<QkBF16> {
  typedef qk_bf1616v vec;
  static QK_INLINE qk_float8v mma(vec a, vec b, qk_float8v c) {
    return __builtin_amdgcn_wmma_f32_16x16x16_bf16_w32(a, b, c);
  }
};

template <typename Tag, bool SYM>
QK_GLOBAL void __launch_bounds__(QK_WMMA_THREADS)
    qk_wmma_prefill(const uint16_t* __restrict__ x, const uint32_t* __restrict__ qweight,
                    const uint16_t* __restrict__ scales, const uint8_t* __restrict__ zeros,
                    const uint16_t* __restrict__ bias, uint16_t* __restrict__ out, int M, int N, int K,
                    int group_size, int k_split) {
  typedef typename QkWmmaTypes<Tag>::vec vec;
  const int lane = threadIdx.x % 32, wave = threadIdx.x / 32;
  const int m0 = blockIdx.y * 32 + (wave / 2) * 16;
  const int n0 = blockIdx.x * 64 + (wave % 2) * 32;
  const int k0 = blockIdx.z * k_split, k1 = min(K, k0 + k_split);
  const int row = m0 + lane % 16;
  const bool row_ok = row < M;
  qk_float8v acc[2] = {};

  for (int k = k0; k < k1; k += 16) {
    union {
      uint4 u[2];
      vec v;
    } a;
    if (row_ok) {
      const uint4* src = reinterpret_cast<const uint4*>(x + (size_t)row * K + k);
      a.u[0] = src[0], a.u[1] = src[1];
    } else {
      a.u[0] = make_uint4(0, 0, 0, 0), a.u[1] = a.u[0];
    }
    const int g = k / group_size;
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const int n = n0 + t * 16 + lane % 16;
      if (n0 + t * 16 >= N) break;  // wave-uniform: N is a multiple of 16
      const uint32_t w0 = qweight[(size_t)(k / 8) * N + n], w1 = qweight[(size_t)(k / 8 + 1) * N + n];
      const float s = qk_bits_to_float(scales[(size_t)g * N + n], Tag());
      const float z = SYM ? 8.f : (float)zeros[(size_t)g * N + n];
      acc[t] = QkWmmaTypes<Tag>::mma(a.v, qk_wmma_b(w0, w1, s, z, Tag()), acc[t]);
    }
  }

#pragma unroll
  for (int t = 0; t < 2; ++t) {
    const int n = n0 + t * 16 + lane % 16;
    if (n0 + t * 16 >= N) break;
    const float b = (bias != nullptr && blockIdx.z == 0) ? qk_bits_to_float(bias[n], Tag()) : 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int m = m0 + 2 * i + lane / 16;
      if (m >= M) continue;
      if (gridDim.z == 1)
        out[(size_t)m * N + n] = qk_float_to_bits(acc[t][i] + b, Tag());
      else
        qk_atomic_add1<Tag>(out + (size_t)m * N + n, acc[t][i] + b);
    }
  }
}

#endif  // QK_IS_HIP
