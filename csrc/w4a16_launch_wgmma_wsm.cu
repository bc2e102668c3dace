// w4a16_launch_wgmma_wsm.cu — the Hopper wgmma kernel's instances with the weights through shared memory.
#include "w4a16_launch_wgmma.h"

#if QK_IS_CUDA
cudaError_t qk_launch_wgmma_wsm(const QkMmaArgs& a, bool bf16, bool sym, int bt, bool dense, int cluster, dim3 grid,
                                cudaStream_t stream) {
  return qk_wgmma_instances<true>(a, bf16, sym, bt, dense, cluster, grid, stream);
}
#endif
