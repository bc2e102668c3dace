// platform.h — every difference between the HIP (RDNA3, gfx11) and CUDA (NVIDIA) builds lives here.
//
// The kernels include only this header for platform facilities; they see:
//   QK_DEVICE / QK_GLOBAL / QK_INLINE       function qualifiers
//   qk_half, qk_bf16                         16-bit float storage types (2 bytes each)
//   qk_dot2(a_pair, b_pair, acc, Tag)        acc + a.x*b.x + a.y*b.y with fp32 accumulation
//                                            (v_dot2_f32_f16 / v_dot2_f32_bf16 on gfx11; fp32 FMAs on CUDA)
//   qk_atomic_cas64, qk_atomic_cas32         compare-and-swap (gfx11 has no packed 16-bit float atomic add)
//   qk_sub_mul2(a, z, s)                     (a - z) * s on two packed fp16 values (v_pk_add/mul_f16; HSUB2/HMUL2)
//   qk_wmma16(c, a, b, Tag)                  c += A B for one 16x16x16 tile, fp32 accumulation, in gfx11's wave32
//                                            WMMA layout: lane l holds row l % 16 of A and column l % 16 of B, 16
//                                            values along k each (8 pairs, k order), and c[i] = C[2i + l / 16][l % 16]
//                                            (v_wmma_f32_16x16x16_{f16,bf16}_w32 on gfx11; on CUDA warp shuffles and
//                                            fp32 FMAs stand in, in the same layout, so the WMMA kernel's indexing and
//                                            arithmetic run, slowly, on NVIDIA too)
//   qk_to_float / qk_from_float              scalar conversions for both 16-bit types
//   qk_thread_x, qk_block_x/y/z, qk_grid_z   threadIdx.x, blockIdx.x/y/z, gridDim.z
//   qk_sync                                  __syncthreads (the block's barrier, shared memory visible across it)
//   QK_IS_HIP / QK_IS_CUDA                   for the few kernels that exist on one platform only
//
// A third platform, the CPU (QK_IS_HOST, with QK_HOST defined: platform_host.h), gives the same names to the dot2 and
// WMMA kernels so that CI runs them with no GPU.
#pragma once

#include <stdint.h>

#if defined(QK_HOST)
#define QK_IS_HIP 0
#define QK_IS_CUDA 0
#define QK_IS_HOST 1
#include "platform_host.h"
#else
#define QK_IS_HOST 0

#if defined(__HIP__) || defined(__HIPCC__) || defined(__HIP_PLATFORM_AMD__)
#define QK_IS_HIP 1
#define QK_IS_CUDA 0
#include <hip/hip_runtime.h>
#else
#define QK_IS_HIP 0
#define QK_IS_CUDA 1
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#define QK_DEVICE __device__
#define QK_GLOBAL __global__
#define QK_INLINE __device__ __forceinline__

// Tags naming the activation type; kernels are templated on them so that one body serves fp16 and bf16.
struct QkF16 {};
struct QkBF16 {};

#if QK_IS_HIP
// Debian's HIP 5.2 headers carry fp16 but no bf16 type: declare the storage types ourselves (2 bytes each,
// bit patterns are all the kernels need) and reach the gfx11 instructions through clang builtins.
typedef _Float16 qk_half;
typedef uint16_t qk_bf16;
typedef _Float16 qk_half2v __attribute__((ext_vector_type(2)));
typedef short qk_bf162v __attribute__((ext_vector_type(2)));
typedef _Float16 qk_half16v __attribute__((ext_vector_type(16)));
typedef short qk_bf1616v __attribute__((ext_vector_type(16)));
typedef float qk_float8v __attribute__((ext_vector_type(8)));

QK_INLINE float qk_dot2(uint32_t a, uint32_t b, float acc, QkF16) {
  return __builtin_amdgcn_fdot2(__builtin_bit_cast(qk_half2v, a), __builtin_bit_cast(qk_half2v, b), acc, false);
}
QK_INLINE float qk_dot2(uint32_t a, uint32_t b, float acc, QkBF16) {
  return __builtin_amdgcn_fdot2_f32_bf16(__builtin_bit_cast(qk_bf162v, a), __builtin_bit_cast(qk_bf162v, b), acc,
                                         false);
}
QK_INLINE float qk_bits_to_float(uint16_t h, QkF16) { return (float)__builtin_bit_cast(_Float16, h); }
QK_INLINE float qk_bits_to_float(uint16_t h, QkBF16) { return __builtin_bit_cast(float, (uint32_t)h << 16); }
QK_INLINE uint16_t qk_float_to_bits(float f, QkF16) { return __builtin_bit_cast(uint16_t, (_Float16)f); }
QK_INLINE uint16_t qk_float_to_bits(float f, QkBF16) {
  uint32_t u = __builtin_bit_cast(uint32_t, f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                             // round to nearest even
  return (uint16_t)(u >> 16);
}
QK_INLINE unsigned long long qk_atomic_cas64(unsigned long long* p, unsigned long long cmp, unsigned long long v) {
  return atomicCAS(p, cmp, v);
}
QK_INLINE unsigned int qk_atomic_cas32(unsigned int* p, unsigned int cmp, unsigned int v) { return atomicCAS(p, cmp, v); }
QK_INLINE uint32_t qk_sub_mul2(uint32_t a, uint32_t z, uint32_t s) {
  const qk_half2v d = __builtin_bit_cast(qk_half2v, a) - __builtin_bit_cast(qk_half2v, z);
  return __builtin_bit_cast(uint32_t, d * __builtin_bit_cast(qk_half2v, s));
}
// v_wmma_f32_16x16x16_{f16,bf16}_w32 on 8 packed pairs of A and of B a lane
#define QK_WMMA16(TAG, VEC, BUILTIN)                                                                \
  QK_INLINE void qk_wmma16(float(&c)[8], const uint32_t(&a)[8], const uint32_t(&b)[8], TAG) {      \
    VEC va, vb;                                                                                      \
    __builtin_memcpy(&va, a, sizeof(va));                                                            \
    __builtin_memcpy(&vb, b, sizeof(vb));                                                            \
    qk_float8v acc;                                                                                  \
    _Pragma("unroll") for (int i = 0; i < 8; ++i) acc[i] = c[i];                                     \
    acc = BUILTIN(va, vb, acc);                                                                      \
    _Pragma("unroll") for (int i = 0; i < 8; ++i) c[i] = acc[i];                                     \
  }
QK_WMMA16(QkF16, qk_half16v, __builtin_amdgcn_wmma_f32_16x16x16_f16_w32)
QK_WMMA16(QkBF16, qk_bf1616v, __builtin_amdgcn_wmma_f32_16x16x16_bf16_w32)
#undef QK_WMMA16
#define QK_WAVE 32
#else
typedef __half qk_half;
typedef __nv_bfloat16 qk_bf16;

QK_INLINE float2 qk_pair_to_float2(uint32_t v, QkF16) { return __half22float2(*reinterpret_cast<const __half2*>(&v)); }
QK_INLINE float2 qk_pair_to_float2(uint32_t v, QkBF16) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v));
}
QK_INLINE float qk_bits_to_float(uint16_t h, QkF16) { return __half2float(__ushort_as_half(h)); }
QK_INLINE float qk_bits_to_float(uint16_t h, QkBF16) { return __bfloat162float(__ushort_as_bfloat16(h)); }
QK_INLINE uint16_t qk_float_to_bits(float f, QkF16) { return __half_as_ushort(__float2half_rn(f)); }
QK_INLINE uint16_t qk_float_to_bits(float f, QkBF16) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
QK_INLINE unsigned long long qk_atomic_cas64(unsigned long long* p, unsigned long long cmp, unsigned long long v) {
  return atomicCAS(p, cmp, v);
}
QK_INLINE unsigned int qk_atomic_cas32(unsigned int* p, unsigned int cmp, unsigned int v) { return atomicCAS(p, cmp, v); }
QK_INLINE uint32_t qk_sub_mul2(uint32_t a, uint32_t z, uint32_t s) {
  const __half2 r = __hmul2(__hsub2(*reinterpret_cast<const __half2*>(&a), *reinterpret_cast<const __half2*>(&z)),
                            *reinterpret_cast<const __half2*>(&s));
  return *reinterpret_cast<const uint32_t*>(&r);
}
// Word j of the A row that lane holds, for the WMMA stand-in (below): a warp shuffle.
struct QkWaveRows {
  const uint32_t (&a)[8];
  QK_INLINE explicit QkWaveRows(const uint32_t (&a_)[8]) : a(a_) {}
  QK_INLINE uint32_t operator()(int lane, int j) const { return __shfl_sync(0xffffffffu, a[j], lane); }
  QK_INLINE void done() const {}
};
#define QK_WAVE 32
#endif

// Indices, the grid's extent in z and the block barrier for the kernels both platforms compile (dot2, WMMA). On gfx11
// through the compiler's builtins, which is what ROCm's device library makes of HIP's threadIdx, blockIdx, gridDim and
// __syncthreads once it is linked and inlined: CI compiles the HIP source with -nogpulib (no device library), where
// HIP's own accessors stay calls into a library that is not there (and the ISA checked would not be a ROCm build's).
#if QK_IS_HIP
QK_INLINE int qk_thread_x() { return (int)__builtin_amdgcn_workitem_id_x(); }
QK_INLINE int qk_block_x() { return (int)__builtin_amdgcn_workgroup_id_x(); }
QK_INLINE int qk_block_y() { return (int)__builtin_amdgcn_workgroup_id_y(); }
QK_INLINE int qk_block_z() { return (int)__builtin_amdgcn_workgroup_id_z(); }
// Blocks along z: the HSA dispatch packet's grid size (work-items, a u32 at byte 20) over its work-group size (a u16
// at byte 8), as the device library computes it.
QK_INLINE int qk_grid_z() {
  typedef __attribute__((address_space(4))) const unsigned char qk_const_u8;
  qk_const_u8* packet = (qk_const_u8*)__builtin_amdgcn_dispatch_ptr();
  const uint32_t grid = *(__attribute__((address_space(4))) const uint32_t*)(packet + 20);
  const uint32_t group = *(__attribute__((address_space(4))) const uint16_t*)(packet + 8);
  return (int)((grid + group - 1) / group);
}
QK_INLINE void qk_sync() {
  __builtin_amdgcn_fence(__ATOMIC_RELEASE, "workgroup");
  __builtin_amdgcn_s_barrier();
  __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "workgroup");
}
#else
QK_INLINE int qk_thread_x() { return (int)threadIdx.x; }
QK_INLINE int qk_block_x() { return (int)blockIdx.x; }
QK_INLINE int qk_block_y() { return (int)blockIdx.y; }
QK_INLINE int qk_block_z() { return (int)blockIdx.z; }
QK_INLINE int qk_grid_z() { return (int)gridDim.z; }
QK_INLINE void qk_sync() { __syncthreads(); }
#endif
#endif  // QK_HOST

#if !QK_IS_HIP
// The stand-ins for gfx11's dot2 and WMMA, on CUDA and on the CPU alike: one definition, so that both builds compute
// the same bits (tests/test_host_kernels.py compares them on an NVIDIA GPU). Each platform gives qk_pair_to_float2 and
// QkWaveRows.
// No dot2 on NVIDIA's CUDA cores: two fp32 FMAs in the same order give the same fp32-accumulated result.
template <typename Tag>
QK_INLINE float qk_dot2(uint32_t a, uint32_t b, float acc, Tag) {
  const float2 fa = qk_pair_to_float2(a, Tag()), fb = qk_pair_to_float2(b, Tag());
  return fmaf(fa.y, fb.y, fmaf(fa.x, fb.x, acc));
}
// WMMA: lane l's c[i] is row r = 2i + l / 16 of A (held by lane r) times its own column of B, added to c[i] in k order.
template <typename Tag>
QK_INLINE void qk_wmma16(float (&c)[8], const uint32_t (&a)[8], const uint32_t (&b)[8], Tag) {
  const int half = (int)((unsigned)qk_thread_x() % 32u / 16u);
  const QkWaveRows rows(a);
  float bk[16];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float2 f = qk_pair_to_float2(b[j], Tag());
    bk[2 * j] = f.x, bk[2 * j + 1] = f.y;
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    float sum = c[i];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float2 f = qk_pair_to_float2(rows(2 * i + half, j), Tag());
      sum = fmaf(f.y, bk[2 * j + 1], fmaf(f.x, bk[2 * j], sum));
    }
    c[i] = sum;
  }
  rows.done();
}
#endif
