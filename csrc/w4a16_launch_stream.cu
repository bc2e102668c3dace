// w4a16_launch_stream.cu — the decode kernels' instances (w4a16_mma_cuda.h: qk_mma_stream, qk_mma_bulk) and their
// launcher.
#include "w4a16_launch.h"
#include "w4a16_mma_cuda.h"

#if QK_IS_CUDA
namespace {

template <typename Tag, int MT, bool SYM>
cudaError_t stream_kernel(const QkMmaArgs& a, int kind, bool pdl, dim3 grid, cudaStream_t stream) {
  const dim3 block(QK_STREAM_WARPS * 32);
  if constexpr (MT == 4) {
    if (kind == kQkStreamLean) return qk_launch_mma_kernel(qk_mma_stream<Tag, MT, SYM, true>, a, grid, block, 0, stream, pdl);
  }
  if constexpr (MT <= 2) {
    if (kind == kQkStreamBulk) {
      auto kernel = qk_mma_bulk<Tag, MT, SYM>;  // as many blocks as its 25 KB of shared memory allow
      const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                                   cudaSharedmemCarveoutMaxShared);
      if (err != cudaSuccess) return err;
      return qk_launch_mma_kernel(kernel, a, grid, block, 0, stream, pdl);
    }
  }
  return qk_launch_mma_kernel(qk_mma_stream<Tag, MT, SYM>, a, grid, block, 0, stream, pdl);
}

template <typename Tag, bool SYM>
cudaError_t stream_tiles(const QkMmaArgs& a, int mt, int kind, bool pdl, dim3 grid, cudaStream_t stream) {
  switch (mt) {
    case 1: return stream_kernel<Tag, 1, SYM>(a, kind, pdl, grid, stream);
    case 2: return stream_kernel<Tag, 2, SYM>(a, kind, pdl, grid, stream);
    case 4: return stream_kernel<Tag, 4, SYM>(a, kind, pdl, grid, stream);
    default: return stream_kernel<Tag, 8, SYM>(a, kind, pdl, grid, stream);
  }
}

}  // namespace

cudaError_t qk_launch_stream(const QkMmaArgs& a, bool bf16, bool sym, int mt, int kind, bool pdl, dim3 grid,
                             cudaStream_t stream) {
  if (bf16) return sym ? stream_tiles<QkBF16, true>(a, mt, kind, pdl, grid, stream)
                       : stream_tiles<QkBF16, false>(a, mt, kind, pdl, grid, stream);
  return sym ? stream_tiles<QkF16, true>(a, mt, kind, pdl, grid, stream)
             : stream_tiles<QkF16, false>(a, mt, kind, pdl, grid, stream);
}
#endif
