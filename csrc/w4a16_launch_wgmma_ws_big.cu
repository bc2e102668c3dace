// w4a16_launch_wgmma_ws_big.cu — the warp-specialized wgmma kernel's 128-accumulator instances: 256 tokens a block,
// 1 chunk a stage, 6 stages (228 KB).
#include "w4a16_launch_wgmma_ws.h"

#if QK_IS_CUDA
cudaError_t qk_launch_wgmma_ws_big(const QkMmaArgs& a, bool bf16, bool sym, int bt, int cluster, int multicast,
                                   dim3 grid, cudaStream_t stream) {
  if (bt != 256) return cudaErrorInvalidValue;
  if (bf16) return sym ? qk_ws_instance<QkBF16, 256, true, 6, 1>(a, cluster, multicast, grid, stream)
                       : qk_ws_instance<QkBF16, 256, false, 6, 1>(a, cluster, multicast, grid, stream);
  return sym ? qk_ws_instance<QkF16, 256, true, 6, 1>(a, cluster, multicast, grid, stream)
             : qk_ws_instance<QkF16, 256, false, 6, 1>(a, cluster, multicast, grid, stream);
}
#endif
