// w4a16_trace.h — a diagnostic build of the decode kernel (CUDA only; QK_STREAM_TRACE=1 through
// QUANTKIT_KERNEL_DEFINES, off by default: no code): thread 0 of each block of qk_mma_stream records the GPU's global
// timer as the block starts, as its first wait for the kernel before returns, as its main loop ends and after its
// epilogue, with the layer's weight address (which kernel), its block and multiprocessor, into a device buffer that
// the extension's stream_trace reads and empties (w4a16_launch_stream.cu). bench/stream_trace.py turns the records of a
// chain into when each kernel's blocks start, wait and leave against the kernel before.
#pragma once

#include "platform.h"

#if QK_IS_CUDA
#ifndef QK_STREAM_TRACE
#define QK_STREAM_TRACE 0
#endif
#define QK_TRACE_RECORDS (1 << 18)
// key: the weights' address; where: block index (x + y gx + z gx gy) and multiprocessor << 32; t: the four times (ns)
struct QkTraceRecord {
  uint64_t key, where, t[4];
};

#if QK_STREAM_TRACE
static __device__ QkTraceRecord qk_trace_records[QK_TRACE_RECORDS];
static __device__ unsigned int qk_trace_count;

QK_INLINE uint64_t qk_trace_now() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t) :: "memory");
  return t;
}
// Thread 0 of the block keeps the times in t (registers) and writes one record at the end.
struct QkTrace {
  uint64_t t[4] = {0, 0, 0, 0};
  QK_INLINE void mark(int i) {
    if (threadIdx.x == 0) t[i] = qk_trace_now();
  }
  QK_INLINE void write(const void* key) const {
    if (threadIdx.x != 0) return;
    const unsigned i = atomicAdd(&qk_trace_count, 1u);
    if (i >= QK_TRACE_RECORDS) return;
    uint32_t sm;
    asm volatile("mov.u32 %0, %%smid;\n" : "=r"(sm));
    const uint64_t block = ((uint64_t)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    qk_trace_records[i] = {reinterpret_cast<uint64_t>(key), block | ((uint64_t)sm << 32), {t[0], t[1], t[2], t[3]}};
  }
};
#else
struct QkTrace {
  QK_INLINE void mark(int) {}
  QK_INLINE void write(const void*) const {}
};
#endif
#endif
