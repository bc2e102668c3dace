// w4a16_launch_stream.cu — the decode kernel's instances (w4a16_mma_cuda.h: qk_mma_stream) and their launcher.
#include "w4a16_launch.h"
#include "w4a16_mma_cuda.h"

#if QK_IS_CUDA
namespace {

template <typename Tag, bool SYM>
cudaError_t stream_tiles(const QkMmaArgs& a, int mt, bool pdl, dim3 grid, cudaStream_t stream) {
  const dim3 block(QK_STREAM_WARPS * 32);
  switch (mt) {
    case 1: return qk_launch_mma_kernel(qk_mma_stream<Tag, 1, SYM>, a, grid, block, 0, stream, pdl);
    case 2: return qk_launch_mma_kernel(qk_mma_stream<Tag, 2, SYM>, a, grid, block, 0, stream, pdl);
    case 4: return qk_launch_mma_kernel(qk_mma_stream<Tag, 4, SYM>, a, grid, block, 0, stream, pdl);
    default: return qk_launch_mma_kernel(qk_mma_stream<Tag, 8, SYM>, a, grid, block, 0, stream, pdl);
  }
}

}  // namespace

cudaError_t qk_launch_stream(const QkMmaArgs& a, bool bf16, bool sym, int mt, bool pdl, dim3 grid,
                             cudaStream_t stream) {
  if (bf16) return sym ? stream_tiles<QkBF16, true>(a, mt, pdl, grid, stream)
                       : stream_tiles<QkBF16, false>(a, mt, pdl, grid, stream);
  return sym ? stream_tiles<QkF16, true>(a, mt, pdl, grid, stream) : stream_tiles<QkF16, false>(a, mt, pdl, grid, stream);
}
#endif
