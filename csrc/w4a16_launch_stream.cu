// w4a16_launch_stream.cu — the decode kernel's instances (w4a16_mma_cuda.h: qk_mma_stream) and their launcher.
#include "w4a16_launch.h"
#include "w4a16_mma_cuda.h"

#if QK_IS_CUDA
namespace {

// The instances: (mt, nt, wk) in {1, 2, 4, 8} x 1 x {one warp per tile}, and for the options measured against
// them, nt = 2 at mt 2 and 4, warps sharing a tile (wk) at mt 1, 2, 4 with nt = 1 and at mt 2, 4 with nt = 2.
template <typename Tag, bool SYM, int MT>
cudaError_t stream_shape(const QkMmaArgs& a, int nt, bool wk, bool pdl, dim3 grid, cudaStream_t stream) {
  const dim3 block(QK_STREAM_WARPS * 32);
  auto go = [&](auto kernel) { return qk_launch_mma_kernel(kernel, a, grid, block, 0, stream, pdl); };
  if (nt == 1) return wk ? go(qk_mma_stream<Tag, MT, SYM, 1, true>) : go(qk_mma_stream<Tag, MT, SYM, 1, false>);
  if constexpr (MT == 2 || MT == 4) {
    if (nt == 2) return wk ? go(qk_mma_stream<Tag, MT, SYM, 2, true>) : go(qk_mma_stream<Tag, MT, SYM, 2, false>);
  }
  return cudaErrorInvalidValue;
}

template <typename Tag, bool SYM>
cudaError_t stream_tiles(const QkMmaArgs& a, int mt, int nt, bool wk, bool pdl, dim3 grid, cudaStream_t stream) {
  switch (mt) {
    case 1: return stream_shape<Tag, SYM, 1>(a, nt, wk, pdl, grid, stream);
    case 2: return stream_shape<Tag, SYM, 2>(a, nt, wk, pdl, grid, stream);
    case 4: return stream_shape<Tag, SYM, 4>(a, nt, wk, pdl, grid, stream);
    default:
      if (nt != 1 || wk) return cudaErrorInvalidValue;
      return qk_launch_mma_kernel(qk_mma_stream<Tag, 8, SYM>, a, grid, dim3(QK_STREAM_WARPS * 32), 0, stream, pdl);
  }
}

}  // namespace

cudaError_t qk_launch_stream(const QkMmaArgs& a, bool bf16, bool sym, int mt, int nt, bool wk, bool pdl, dim3 grid,
                             cudaStream_t stream) {
  if (bf16) return sym ? stream_tiles<QkBF16, true>(a, mt, nt, wk, pdl, grid, stream)
                       : stream_tiles<QkBF16, false>(a, mt, nt, wk, pdl, grid, stream);
  return sym ? stream_tiles<QkF16, true>(a, mt, nt, wk, pdl, grid, stream)
             : stream_tiles<QkF16, false>(a, mt, nt, wk, pdl, grid, stream);
}
#endif
