// w4a16_prefetch.h — L2 prefetch requests of a layer's packed tensors (CUDA only): the byte ranges, and the loop that
// issues a thread's share of them. w4a16_prefetch.cu's kernel does nothing else; the decode kernel
// (w4a16_mma_cuda.h: qk_mma_stream) issues them for the next layer from its blocks as they finish their own reads.
//
// A request only starts copies into the L2 (sm_90: one bulk prefetch, cp.async.bulk.prefetch.L2, of up to
// QK_PREFETCH_SLICE bytes; older parts: one prefetch.global.L2 a 128-byte line); they complete after the thread has
// moved on or exited. Nothing is written.
#pragma once

#include "platform.h"

#if QK_IS_CUDA
#define QK_PREFETCH_SLICE 16384
#define QK_PREFETCH_RANGES 4

// The first bytes[i] bytes at p[i], i < n; addresses and byte counts multiples of 16. n = 0: nothing.
// stream_evict_first: the decode kernel that requests them reads its own weights with an L2 evict-first policy
// (qk_stream_policy), so that the rest of its stream pushes its own lines out of the L2 before the requested ones.
struct QkPrefetchRanges {
  const char* p[QK_PREFETCH_RANGES];
  uint64_t bytes[QK_PREFETCH_RANGES];
  int n;
  int stream_evict_first;
};

// The L2 cache policy (createpolicy, sm_80+) of a decode kernel's weight loads (ld ... .L2::cache_hint): every line
// evict-first, or at the normal priority that a load without a policy gives.
QK_INLINE uint64_t qk_stream_policy(bool evict_first) {
  uint64_t policy = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if (evict_first)
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  else
    asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;\n" : "=l"(policy));
#endif
  return policy;
}

__host__ __device__ inline uint64_t qk_prefetch_slices(uint64_t bytes) {
  return (bytes + QK_PREFETCH_SLICE - 1) / QK_PREFETCH_SLICE;
}

// f(address, bytes) for slices me, me + stride, ... of the ranges' slices laid end to end (each range cut on its own,
// so no slice crosses from one range to the next, and each at most QK_PREFETCH_SLICE bytes). Host code too, for
// tests/prefetch_slices_check.cu.
template <typename F>
__host__ __device__ inline void qk_prefetch_each_slice(const QkPrefetchRanges& r, uint64_t me, uint64_t stride, F&& f) {
  uint64_t first = 0;  // the first slice of range i
#pragma unroll
  for (int i = 0; i < QK_PREFETCH_RANGES; ++i) {
    if (i >= r.n) break;
    const uint64_t count = qk_prefetch_slices(r.bytes[i]);
    for (uint64_t s = first + (me + stride - first % stride) % stride; s < first + count; s += stride) {
      const uint64_t off = (s - first) * QK_PREFETCH_SLICE, left = r.bytes[i] - off;
      f(r.p[i] + off, (uint32_t)(left < QK_PREFETCH_SLICE ? left : QK_PREFETCH_SLICE));
    }
    first += count;
  }
}

// This thread's requests: slices me, me + stride, ... (qk_prefetch_each_slice).
QK_INLINE void qk_l2_prefetch_slices(const QkPrefetchRanges& r, uint64_t me, uint64_t stride) {
  qk_prefetch_each_slice(r, me, stride, [](const char* p, uint32_t n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(n) : "memory");
#else
    for (uint32_t line = 0; line < n; line += 128) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p + line));
#endif
  });
}
#endif
