// w4a16_prefetch.cu — warming the L2 cache with a layer's packed weights before its kernel runs, as a kernel of its
// own (w4a16_prefetch.h). CUDA only.
//
// In a decode step at small batch the DRAM idles while the kernels between two quantized linears run (rotary
// embedding, cache writes, attention: latency-bound, they read little). A prefetch of the next linear's weights
// issued just before them fills the L2 in that idle time, and the linear then reads from the L2. The kernel only
// issues the requests and exits.
#include "w4a16_launch.h"

#if QK_IS_CUDA
namespace {

constexpr int QK_PREFETCH_THREADS = 128;

QK_GLOBAL void __launch_bounds__(QK_PREFETCH_THREADS) qk_l2_prefetch(const QkPrefetchRanges r) {
  qk_l2_prefetch_slices(r, (uint64_t)blockIdx.x * blockDim.x + threadIdx.x, (uint64_t)gridDim.x * blockDim.x);
}

}  // namespace

cudaError_t qk_launch_l2_prefetch(const QkPrefetchRanges& r, cudaStream_t stream) {
  uint64_t slices = 0;
  for (int i = 0; i < r.n; ++i) slices += qk_prefetch_slices(r.bytes[i]);
  if (slices == 0) return cudaSuccess;
  const uint64_t blocks = (slices + QK_PREFETCH_THREADS - 1) / QK_PREFETCH_THREADS;
  qk_l2_prefetch<<<(unsigned)(blocks < 64 ? blocks : 64), QK_PREFETCH_THREADS, 0, stream>>>(r);
  return cudaGetLastError();
}
#endif
