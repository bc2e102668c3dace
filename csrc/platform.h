// platform.h — every difference between the HIP (RDNA3, gfx11) and CUDA (NVIDIA) builds lives here.
//
// The kernels include only this header for platform facilities; they see:
//   QK_DEVICE / QK_GLOBAL / QK_INLINE       function qualifiers
//   qk_half, qk_bf16                         16-bit float storage types (2 bytes each)
//   qk_dot2(a_pair, b_pair, acc, Tag)        acc + a.x*b.x + a.y*b.y with fp32 accumulation
//                                            (v_dot2_f32_f16 / v_dot2_f32_bf16 on gfx11; fp32 FMAs on CUDA)
//   qk_atomic_cas64, qk_atomic_cas32         compare-and-swap (gfx11 has no packed 16-bit float atomic add)
//   qk_to_float / qk_from_float              scalar conversions for both 16-bit types
//   QK_IS_HIP / QK_IS_CUDA                   for the few kernels that exist on one platform only
#pragma once

#include <stdint.h>

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
#define QK_WAVE 32
#else
typedef __half qk_half;
typedef __nv_bfloat16 qk_bf16;

// No dot2 on NVIDIA's CUDA cores: two fp32 FMAs in the same order give the same fp32-accumulated result.
QK_INLINE float qk_dot2(uint32_t a, uint32_t b, float acc, QkF16) {
  float2 fa = __half22float2(*reinterpret_cast<const __half2*>(&a));
  float2 fb = __half22float2(*reinterpret_cast<const __half2*>(&b));
  return fmaf(fa.y, fb.y, fmaf(fa.x, fb.x, acc));
}
QK_INLINE float qk_dot2(uint32_t a, uint32_t b, float acc, QkBF16) {
  float2 fa = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&a));
  float2 fb = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&b));
  return fmaf(fa.y, fb.y, fmaf(fa.x, fb.x, acc));
}
QK_INLINE float qk_bits_to_float(uint16_t h, QkF16) { return __half2float(__ushort_as_half(h)); }
QK_INLINE float qk_bits_to_float(uint16_t h, QkBF16) { return __bfloat162float(__ushort_as_bfloat16(h)); }
QK_INLINE uint16_t qk_float_to_bits(float f, QkF16) { return __half_as_ushort(__float2half_rn(f)); }
QK_INLINE uint16_t qk_float_to_bits(float f, QkBF16) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
QK_INLINE unsigned long long qk_atomic_cas64(unsigned long long* p, unsigned long long cmp, unsigned long long v) {
  return atomicCAS(p, cmp, v);
}
QK_INLINE unsigned int qk_atomic_cas32(unsigned int* p, unsigned int cmp, unsigned int v) { return atomicCAS(p, cmp, v); }
#define QK_WAVE 32
#endif
