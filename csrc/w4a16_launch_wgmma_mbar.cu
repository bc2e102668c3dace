// w4a16_launch_wgmma_mbar.cu — the Hopper wgmma kernel's instances with the weights through shared memory and
// per-stage mbarriers instead of the block barrier.
#include "w4a16_launch_wgmma.h"

#if QK_IS_CUDA
cudaError_t qk_launch_wgmma_mbar(const QkMmaArgs& a, bool bf16, bool sym, int bt, bool dense, int cluster,
                                 dim3 grid, cudaStream_t stream) {
  return qk_wgmma_instances<QK_WGMMA_MBAR>(a, bf16, sym, bt, dense, cluster, grid, stream);
}
#endif
