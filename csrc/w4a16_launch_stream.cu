// w4a16_launch_stream.cu — the decode kernel's instances (w4a16_mma_cuda.h: qk_mma_stream) and their launcher.
#include "w4a16_launch.h"
#include "w4a16_mma_cuda.h"

#if QK_IS_CUDA
namespace {

template <typename Tag, int MT, bool SYM>
cudaError_t stream_kernel(const QkMmaArgs& a, int variant, bool pdl, dim3 grid, cudaStream_t stream) {
  const dim3 block(QK_STREAM_WARPS * 32);
  if constexpr (MT <= 2) {
    switch (variant) {
      case 1: return qk_launch_mma_kernel(qk_mma_stream<Tag, MT, SYM, 4, true>, a, grid, block, 0, stream, pdl);
      case 2: return qk_launch_mma_kernel(qk_mma_stream<Tag, MT, SYM, 2, true>, a, grid, block, 0, stream, pdl);
      default: break;
    }
  }
  if constexpr (MT == 1) {  // (with 2 token tiles, batches of 8 need a stack frame)
    if (variant == 3) return qk_launch_mma_kernel(qk_mma_stream<Tag, MT, SYM, 8, false>, a, grid, block, 0, stream, pdl);
  }
  return qk_launch_mma_kernel(qk_mma_stream<Tag, MT, SYM>, a, grid, block, 0, stream, pdl);
}

template <typename Tag, bool SYM>
cudaError_t stream_tiles(const QkMmaArgs& a, int mt, int variant, bool pdl, dim3 grid, cudaStream_t stream) {
  switch (mt) {
    case 1: return stream_kernel<Tag, 1, SYM>(a, variant, pdl, grid, stream);
    case 2: return stream_kernel<Tag, 2, SYM>(a, variant, pdl, grid, stream);
    case 4: return stream_kernel<Tag, 4, SYM>(a, variant, pdl, grid, stream);
    default: return stream_kernel<Tag, 8, SYM>(a, variant, pdl, grid, stream);
  }
}

}  // namespace

cudaError_t qk_launch_stream(const QkMmaArgs& a, bool bf16, bool sym, int mt, int variant, bool pdl, dim3 grid,
                             cudaStream_t stream) {
  if (bf16) return sym ? stream_tiles<QkBF16, true>(a, mt, variant, pdl, grid, stream)
                       : stream_tiles<QkBF16, false>(a, mt, variant, pdl, grid, stream);
  return sym ? stream_tiles<QkF16, true>(a, mt, variant, pdl, grid, stream)
             : stream_tiles<QkF16, false>(a, mt, variant, pdl, grid, stream);
}
#endif
