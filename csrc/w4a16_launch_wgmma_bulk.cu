// w4a16_launch_wgmma_bulk.cu — the Hopper wgmma kernel's instances with per-stage mbarriers and the stages filled by
// one thread's bulk copies (x packed by qk_wgmma_pack_x).
#include "w4a16_launch_wgmma.h"

#if QK_IS_CUDA
cudaError_t qk_launch_wgmma_bulk(const QkMmaArgs& a, bool bf16, bool sym, int bt, bool dense, int cluster,
                                 dim3 grid, cudaStream_t stream) {
  return qk_wgmma_instances<QK_WGMMA_BULK>(a, bf16, sym, bt, dense, cluster, grid, stream);
}
#endif
