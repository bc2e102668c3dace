// w4a16_launch_wgmma.cu — the Hopper wgmma kernel's instances with the weights in registers, and its launcher.
#include "w4a16_launch_wgmma.h"

#if QK_IS_CUDA
cudaError_t qk_launch_wgmma_regs(const QkMmaArgs& a, bool bf16, bool sym, int bt, bool dense, int cluster, dim3 grid,
                                 cudaStream_t stream) {
  return qk_wgmma_instances<false>(a, bf16, sym, bt, dense, cluster, grid, stream);
}

cudaError_t qk_launch_wgmma(const QkMmaArgs& a, bool bf16, bool sym, int bt, bool dense, bool wsm, int cluster,
                            dim3 grid, cudaStream_t stream) {
  return wsm ? qk_launch_wgmma_wsm(a, bf16, sym, bt, dense, cluster, grid, stream)
             : qk_launch_wgmma_regs(a, bf16, sym, bt, dense, cluster, grid, stream);
}
#endif
