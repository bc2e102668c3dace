// w4a16_prefetch.cu — warming the L2 cache with a layer's packed weights before its kernel runs. CUDA only.
//
// In a decode step at small batch the DRAM idles while the kernels between two quantized linears run (rotary
// embedding, cache writes, attention: latency-bound, they read little). A prefetch of the next linear's weights
// issued just before them fills the L2 in that idle time, and the linear then reads from the L2. The kernel only
// issues requests (sm_90: one bulk prefetch, cp.async.bulk.prefetch.L2, of up to QK_PREFETCH_SLICE bytes a thread;
// older parts: one prefetch.global.L2 a 128-byte line) and exits; the copies go on after it. Nothing is written.
#include "w4a16_launch.h"

#if QK_IS_CUDA
namespace {

constexpr int QK_PREFETCH_THREADS = 128;

__host__ __device__ inline uint64_t qk_slices(uint64_t bytes) { return (bytes + QK_PREFETCH_SLICE - 1) / QK_PREFETCH_SLICE; }

// The ranges' slices laid end to end (each range cut on its own, so no slice crosses from one to the next), taken
// by the grid's threads in turn.
QK_GLOBAL void __launch_bounds__(QK_PREFETCH_THREADS) qk_l2_prefetch(const QkPrefetchRanges r) {
  const uint64_t stride = (uint64_t)gridDim.x * blockDim.x, me = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  uint64_t first = 0;  // the first slice of range i
#pragma unroll
  for (int i = 0; i < QK_PREFETCH_RANGES; ++i) {
    if (i >= r.n) break;
    const uint64_t count = qk_slices(r.bytes[i]);
    // this thread's first slice at or after `first`
    for (uint64_t s = first + (me + stride - first % stride) % stride; s < first + count; s += stride) {
      const uint64_t off = (s - first) * QK_PREFETCH_SLICE, left = r.bytes[i] - off;
      const uint32_t n = (uint32_t)(left < QK_PREFETCH_SLICE ? left : QK_PREFETCH_SLICE);
      const char* p = r.p[i] + off;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(n) : "memory");
#else
      for (uint32_t line = 0; line < n; line += 128) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p + line));
#endif
    }
    first += count;
  }
}

}  // namespace

cudaError_t qk_launch_l2_prefetch(const QkPrefetchRanges& r, cudaStream_t stream) {
  uint64_t slices = 0;
  for (int i = 0; i < r.n; ++i) slices += qk_slices(r.bytes[i]);
  if (slices == 0) return cudaSuccess;
  const uint64_t blocks = (slices + QK_PREFETCH_THREADS - 1) / QK_PREFETCH_THREADS;
  qk_l2_prefetch<<<(unsigned)(blocks < 64 ? blocks : 64), QK_PREFETCH_THREADS, 0, stream>>>(r);
  return cudaGetLastError();
}
#endif
