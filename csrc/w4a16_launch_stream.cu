// w4a16_launch_stream.cu — the streaming decode kernel's instances (w4a16_mma_cuda.h) and their launcher.
#include "w4a16_launch.h"
#include "w4a16_mma_cuda.h"

#if QK_IS_CUDA
namespace {

template <typename Tag, int MT, bool SYM>
cudaError_t stream_kernel(const QkMmaArgs& a, bool lean, bool pdl, dim3 grid, cudaStream_t stream) {
  const dim3 block(QK_STREAM_WARPS * 32);
  if constexpr (MT == 4) {
    if (lean) return qk_launch_mma_kernel(qk_mma_stream<Tag, MT, SYM, true>, a, grid, block, 0, stream, pdl);
  }
  return qk_launch_mma_kernel(qk_mma_stream<Tag, MT, SYM>, a, grid, block, 0, stream, pdl);
}

template <typename Tag, bool SYM>
cudaError_t stream_tiles(const QkMmaArgs& a, int mt, bool lean, bool pdl, dim3 grid, cudaStream_t stream) {
  switch (mt) {
    case 1: return stream_kernel<Tag, 1, SYM>(a, lean, pdl, grid, stream);
    case 2: return stream_kernel<Tag, 2, SYM>(a, lean, pdl, grid, stream);
    case 4: return stream_kernel<Tag, 4, SYM>(a, lean, pdl, grid, stream);
    default: return stream_kernel<Tag, 8, SYM>(a, lean, pdl, grid, stream);
  }
}

}  // namespace

cudaError_t qk_launch_stream(const QkMmaArgs& a, bool bf16, bool sym, int mt, bool lean, bool pdl, dim3 grid,
                             cudaStream_t stream) {
  if (bf16) return sym ? stream_tiles<QkBF16, true>(a, mt, lean, pdl, grid, stream)
                       : stream_tiles<QkBF16, false>(a, mt, lean, pdl, grid, stream);
  return sym ? stream_tiles<QkF16, true>(a, mt, lean, pdl, grid, stream)
             : stream_tiles<QkF16, false>(a, mt, lean, pdl, grid, stream);
}
#endif
