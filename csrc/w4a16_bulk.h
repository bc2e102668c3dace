// w4a16_bulk.h — shared-memory mbarriers and bulk copies global -> shared (sm_90+; CUDA only): what the kernels that
// move their weights with the copy engine instead of registers share (the warp-specialized wgmma kernel's tensor
// copies, w4a16_wgmma_ws_cuda.h; the decode kernel's bulk instances, w4a16_mma_cuda.h: qk_mma_bulk). On older parts
// the bodies are empty: nothing there launches those kernels.
#pragma once

#include "platform.h"

#if QK_IS_CUDA
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define QK_HAS_BULK 1
#else
#define QK_HAS_BULK 0
#endif

// Init with an arrival count, arrive, arrive and set the bytes the phase waits for, wait for the phase of a parity to
// complete.
QK_INLINE void qk_mbar_init(uint32_t bar, int count) {
#if QK_HAS_BULK
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
// The barriers' initialization made visible to the copy engine (then a block barrier for the other threads).
QK_INLINE void qk_mbar_init_fence() {
#if QK_HAS_BULK
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
QK_INLINE void qk_mbar_arrive(uint32_t bar) {
#if QK_HAS_BULK
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}
QK_INLINE void qk_mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#if QK_HAS_BULK
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
QK_INLINE void qk_mbar_wait(uint32_t bar, uint32_t parity) {
#if QK_HAS_BULK
  uint32_t done = 0;
  while (!done)
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(bar), "r"(parity)
                 : "memory");
#endif
}
// bytes (a multiple of 16) from src to dst (both 16-byte aligned) by the copy engine, completing on bar by as many
// bytes; into this block's shared memory (a shared::cta address is one of the executing block in the cluster window).
QK_INLINE void qk_bulk_copy(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
#if QK_HAS_BULK
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
#endif
}
#endif
