// w4a16_launch_wgmma_ws_big.cu — the warp-specialized wgmma kernel's 128-accumulator instances: 128 x 256 outputs x
// tokens a block (1 chunk a stage, 6 stages) and 256 x 128 (1 chunk, 8 stages), 228 and 208 KB of stages.
#include "w4a16_launch_wgmma_ws.h"

#if QK_IS_CUDA
namespace {

template <typename Tag, bool SYM>
cudaError_t ws_big_tile(const QkMmaArgs& a, int bt, int rows, int cluster, dim3 grid, cudaStream_t stream) {
  if (rows == 128 && bt == 256) return qk_ws_instance<Tag, 256, SYM, 6, 1>(a, cluster, grid, stream);
  if (rows == 256 && bt == 128) return qk_ws_instance<Tag, 128, SYM, 8, 1, 2>(a, cluster, grid, stream);
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t qk_launch_wgmma_ws_big(const QkMmaArgs& a, bool bf16, bool sym, int bt, int rows, int cluster, dim3 grid,
                                   cudaStream_t stream) {
  if (bf16) return sym ? ws_big_tile<QkBF16, true>(a, bt, rows, cluster, grid, stream)
                       : ws_big_tile<QkBF16, false>(a, bt, rows, cluster, grid, stream);
  return sym ? ws_big_tile<QkF16, true>(a, bt, rows, cluster, grid, stream)
             : ws_big_tile<QkF16, false>(a, bt, rows, cluster, grid, stream);
}
#endif
