// w4a16_common.h — the 4-bit arithmetic both platforms share (docs/formats.md §2).
//
// Magic-number dequantization: OR-ing a nibble into the mantissa of a 16-bit float whose exponent makes
// one mantissa unit worth 1 gives that float exactly:
//   fp16: 0x6400 | q  == 1024 + q        bf16: 0x4300 | q  == 128 + q
// Two nibbles 16 bits apart become a pair: ((w >> s) & 0x000F000F) | 0x64006400 is the half2 (1024 + q_lo,
// 1024 + q_hi). (1024 + q) - (1024 + zero) = q - zero is exact in both types, and (q - zero) * scale rounds once,
// so a weight dequantized here is bit-identical to the reference's fp32 scale*(q-zero) rounded to the type.
#pragma once

#include "platform.h"

template <typename Tag>
struct QkMagic;
template <>
struct QkMagic<QkF16> {
  static constexpr uint32_t pair = 0x64006400u;  // half2 (1024, 1024)
  static constexpr float bias = 1024.0f;
  static constexpr uint32_t one_pair = 0x3C003C00u;  // half2 (1, 1)
};
template <>
struct QkMagic<QkBF16> {
  static constexpr uint32_t pair = 0x43004300u;  // bf16x2 (128, 128)
  static constexpr float bias = 128.0f;
  static constexpr uint32_t one_pair = 0x3F803F80u;  // bf16x2 (1, 1)
};

// The pair (magic + q[s], magic + q[s + 16 bits]) of word w, nibble position p (0..3). On NVIDIA the mask and
// the OR are one lop3 (the compiler emits two instructions for the C expression, each with its own immediate).
template <typename Tag>
QK_INLINE uint32_t qk_magic_pair(uint32_t w, int p) {
#if QK_IS_CUDA && defined(__CUDA_ARCH__)
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(r) : "r"(w >> (4 * p)), "n"(0x000F000F), "r"(QkMagic<Tag>::pair));
  return r;  // 0xea: (a & b) | c
#else
  return ((w >> (4 * p)) & 0x000F000Fu) | QkMagic<Tag>::pair;
#endif
}

// Both halves of a 32-bit pair set to the 16-bit pattern h.
QK_INLINE uint32_t qk_splat(uint16_t h) { return (uint32_t)h | ((uint32_t)h << 16); }

QK_INLINE uint16_t qk_lo(uint32_t v) { return (uint16_t)(v & 0xffffu); }
QK_INLINE uint16_t qk_hi(uint32_t v) { return (uint16_t)(v >> 16); }

// out[i] += v[i] for four adjacent 16-bit floats, by a 64-bit compare-and-swap loop (gfx11 has no packed
// 16-bit float atomic add; the same code runs on CUDA). p must be 8-byte aligned.
template <typename Tag>
QK_INLINE void qk_atomic_add4(uint16_t* p, const float v[4]) {
  unsigned long long* word = reinterpret_cast<unsigned long long*>(p);
  unsigned long long old = *reinterpret_cast<volatile unsigned long long*>(word), assumed;
  do {
    assumed = old;
    unsigned long long next = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float cur = qk_bits_to_float((uint16_t)(assumed >> (16 * i)), Tag());
      next |= (unsigned long long)qk_float_to_bits(cur + v[i], Tag()) << (16 * i);
    }
    old = qk_atomic_cas64(word, assumed, next);
  } while (old != assumed);
}

// out += v for one 16-bit float, by a 32-bit compare-and-swap on the aligned word that holds it.
template <typename Tag>
QK_INLINE void qk_atomic_add1(uint16_t* p, float v) {
  uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  unsigned int* word = reinterpret_cast<unsigned int*>(addr & ~(uintptr_t)3);
  const int shift = (addr & 2) ? 16 : 0;
  unsigned int old = *reinterpret_cast<volatile unsigned int*>(word), assumed;
  do {
    assumed = old;
    float cur = qk_bits_to_float((uint16_t)(assumed >> shift), Tag());
    unsigned int bits = qk_float_to_bits(cur + v, Tag());
    unsigned int next = (assumed & ~(0xffffu << shift)) | (bits << shift);
    old = qk_atomic_cas32(word, assumed, next);
  } while (old != assumed);
}
