// w4a16_launch_wgmma.h — the wgmma kernel's instances (w4a16_wgmma_cuda.h), for the two translation units that
// compile them in parallel: w4a16_launch_wgmma.cu (weights in registers, and the launcher) and
// w4a16_launch_wgmma_wsm.cu (weights through shared memory).
#pragma once

#include <type_traits>

#include "w4a16_launch.h"
#include "w4a16_wgmma_cuda.h"

#if QK_IS_CUDA
template <typename Tag, int BT, bool SYM, int STAGES, int KS, int MINB, bool WSM>
cudaError_t qk_wgmma_instance(const QkMmaArgs& a, int cluster, dim3 grid, cudaStream_t stream) {
  auto kernel = qk_wgmma_gemm<Tag, BT, SYM, STAGES, KS, MINB, WSM>;
  const int smem = qk_wgmma_smem_bytes(BT, STAGES, KS, WSM, SYM);
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  return qk_launch_mma_kernel(kernel, a, grid, dim3(QK_WGMMA_THREADS), smem, stream, false, cluster);
}

// The instances: 64 tokens x 4 chunks per step, 128 x 2, 256 x 1 (one block per multiprocessor), and the dense
// (two blocks per multiprocessor, registers capped) 64 x 2 and 128 x 1.
template <bool WSM>
cudaError_t qk_wgmma_instances(const QkMmaArgs& a, bool bf16, bool sym, int bt, bool dense, int cluster, dim3 grid,
                               cudaStream_t stream) {
  return qk_by_type(bf16, sym, [&](auto tag, auto sym_c) {
    using Tag = decltype(tag);
    constexpr bool S = decltype(sym_c)::value;
    if (bt == 64 && dense) return qk_wgmma_instance<Tag, 64, S, 3, 2, 2, WSM>(a, cluster, grid, stream);
    if (bt == 64) return qk_wgmma_instance<Tag, 64, S, 4, 4, 1, WSM>(a, cluster, grid, stream);
    if (bt == 128 && dense) return qk_wgmma_instance<Tag, 128, S, 4, 1, 2, WSM>(a, cluster, grid, stream);
    if (bt == 128) return qk_wgmma_instance<Tag, 128, S, 3, 2, 1, WSM>(a, cluster, grid, stream);
    return qk_wgmma_instance<Tag, 256, S, 4, 1, 1, WSM>(a, cluster, grid, stream);
  });
}

// Each defined in its own translation unit.
cudaError_t qk_launch_wgmma_regs(const QkMmaArgs& a, bool bf16, bool sym, int bt, bool dense, int cluster, dim3 grid,
                                 cudaStream_t stream);
cudaError_t qk_launch_wgmma_wsm(const QkMmaArgs& a, bool bf16, bool sym, int bt, bool dense, int cluster, dim3 grid,
                                cudaStream_t stream);
#endif
