// w4a16_launch_stream.cu — the decode kernel's instances (w4a16_mma_cuda.h: qk_mma_stream, with its rotary epilogue
// too, and qk_mma_mlp, a step's gated MLP in one launch) and their launchers.
#include <algorithm>

#include "w4a16_launch.h"
#include "w4a16_mma_cuda.h"

#if QK_IS_CUDA
namespace {

// The instances: mt in {1, 2, 4, 8} token tiles with one warp per tile, and mt in {1, 2, 4} with the block's warps
// sharing a tile (wk), those also with the L2 prefetch of a next layer at their end (pf.n > 0: wk only) or with the
// gated pair's epilogue (glu: wk only, without the prefetch); each but the prefetch's also with the residual add and
// RMSNorm folded in (FOLD: rn has rms or residual; sq, QkSumSq, the sums of squares between two of them); wk_warps 8:
// at one token tile with wk and without the prefetch, the blocks of 8 warps (with the fold or not).
template <typename Tag, bool SYM, int MT, bool FOLD>
cudaError_t stream_shape(const QkMmaArgs& a, bool wk, bool pdl, int cluster, dim3 grid, const QkPrefetchRanges& pf,
                         bool glu, const QkResidualNorm& rn, const QkSumSq& sq, int wk_warps, cudaStream_t stream) {
  const dim3 block(QK_STREAM_WARPS * 32);
  if (wk_warps == 8) {  // (one token tile, wk, not the prefetch)
    if constexpr (MT == 1) {
      if (wk && pf.n == 0)
        return qk_launch_mma_kernel(glu ? qk_mma_stream<Tag, 1, SYM, true, false, true, FOLD, 8>
                                        : qk_mma_stream<Tag, 1, SYM, true, false, false, FOLD, 8>,
                                    a, grid, dim3(8 * 32), 0, stream, pdl, cluster, pf, rn, sq, QkRope());
    }
    return cudaErrorInvalidValue;
  }
  if (wk_warps != QK_STREAM_WARPS) return cudaErrorInvalidValue;
  if constexpr (MT <= 4) {
    if (glu && wk && pf.n == 0)
      return qk_launch_mma_kernel(qk_mma_stream<Tag, MT, SYM, true, false, true, FOLD>, a, grid, block, 0, stream, pdl,
                                  cluster, pf, rn, sq, QkRope());
    if (glu) return cudaErrorInvalidValue;
    if (wk && pf.n > 0) {
      if constexpr (FOLD) return cudaErrorInvalidValue;  // (no fold with the prefetch)
      return qk_launch_mma_kernel(qk_mma_stream<Tag, MT, SYM, true, true>, a, grid, block, 0, stream, pdl, cluster, pf,
                                  rn, sq, QkRope());
    }
    if (wk)
      return qk_launch_mma_kernel(qk_mma_stream<Tag, MT, SYM, true, false, false, FOLD>, a, grid, block, 0, stream, pdl,
                                  cluster, pf, rn, sq, QkRope());
  }
  if (wk || pf.n > 0 || glu) return cudaErrorInvalidValue;
  return qk_launch_mma_kernel(qk_mma_stream<Tag, MT, SYM, false, false, false, FOLD>, a, grid, block, 0, stream, pdl,
                              cluster, pf, rn, sq, QkRope());
}

template <typename Tag, bool SYM, bool FOLD>
cudaError_t stream_tiles(const QkMmaArgs& a, int mt, bool wk, bool pdl, int cluster, dim3 grid,
                         const QkPrefetchRanges& pf, bool glu, const QkResidualNorm& rn, const QkSumSq& sq,
                         int wk_warps, cudaStream_t stream) {
  switch (mt) {
    case 1: return stream_shape<Tag, SYM, 1, FOLD>(a, wk, pdl, cluster, grid, pf, glu, rn, sq, wk_warps, stream);
    case 2: return stream_shape<Tag, SYM, 2, FOLD>(a, wk, pdl, cluster, grid, pf, glu, rn, sq, wk_warps, stream);
    case 4: return stream_shape<Tag, SYM, 4, FOLD>(a, wk, pdl, cluster, grid, pf, glu, rn, sq, wk_warps, stream);
    default: return stream_shape<Tag, SYM, 8, FOLD>(a, wk, pdl, cluster, grid, pf, glu, rn, sq, wk_warps, stream);
  }
}

}  // namespace

cudaError_t qk_launch_mlp(const QkMlpArgs& a, bool bf16, bool sym, bool pdl, cudaStream_t stream) {
  const int splits = (a.N1 / 2 / 64 + a.chunks_per_split - 1) / a.chunks_per_split;
  const dim3 grid(a.N1 / 16 + a.N2 / 16 * splits);
  return qk_by_type(bf16, sym, [&](auto tag, auto s) {
    return qk_launch_ex(qk_mma_mlp<decltype(tag), decltype(s)::value>, grid, dim3(QK_STREAM_WARPS * 32), 0, stream,
                        pdl, dim3(1, 1, 1), a.x, a.w1, a.meta1, a.w2, a.meta2, a.mid, a.out, a.ws, a.counters, a.sync,
                        a.M, a.N1, a.K1, a.N2, a.group1, a.group2, a.chunks_per_split);
  });
}

int qk_stream_trace_read(QkTraceRecord* host, int max) {
#if QK_STREAM_TRACE
  unsigned int count = 0;
  if (cudaMemcpyFromSymbol(&count, qk_trace_count, sizeof(count)) != cudaSuccess) return -2;
  const int n = (int)std::min<unsigned int>(count, (unsigned int)std::min(max, QK_TRACE_RECORDS));
  if (n > 0 && cudaMemcpyFromSymbol(host, qk_trace_records, sizeof(QkTraceRecord) * n) != cudaSuccess) return -2;
  count = 0;
  if (cudaMemcpyToSymbol(qk_trace_count, &count, sizeof(count)) != cudaSuccess) return -2;
  return n;
#else
  (void)host, (void)max;
  return -1;
#endif
}

cudaError_t qk_launch_stream(const QkMmaArgs& a, bool bf16, bool sym, int mt, bool wk, bool pdl, int cluster, dim3 grid,
                             const QkPrefetchRanges& pf, bool glu, const QkResidualNorm& rn, const QkSumSq& sq,
                             int wk_warps, cudaStream_t stream) {
  const bool fold = rn.rms != nullptr || rn.residual != nullptr;  // the FOLD instances
  return qk_by_type(bf16, sym, [&](auto tag, auto s) {
    using Tag = decltype(tag);
    constexpr bool SYM = decltype(s)::value;
    return fold ? stream_tiles<Tag, SYM, true>(a, mt, wk, pdl, cluster, grid, pf, glu, rn, sq, wk_warps, stream)
                : stream_tiles<Tag, SYM, false>(a, mt, wk, pdl, cluster, grid, pf, glu, rn, sq, wk_warps, stream);
  });
}

cudaError_t qk_launch_stream_rope(const QkMmaArgs& a, bool bf16, bool sym, bool pdl, int wk_warps, const QkRope& rope,
                                  cudaStream_t stream) {
  const dim3 grid(1, a.N / 16, 1);
  const QkPrefetchRanges pf = {};
  return qk_by_type(bf16, sym, [&](auto tag, auto s) {
    using Tag = decltype(tag);
    constexpr bool SYM = decltype(s)::value;
    if (wk_warps == 8)
      return qk_launch_mma_kernel(qk_mma_stream<Tag, 1, SYM, true, false, false, false, 8, true>, a, grid,
                                  dim3(8 * 32), 0, stream, pdl, 1, pf, QkResidualNorm(), QkSumSq(), rope);
    if (wk_warps == QK_STREAM_WARPS)
      return qk_launch_mma_kernel(qk_mma_stream<Tag, 1, SYM, true, false, false, false, QK_STREAM_WARPS, true>, a,
                                  grid, dim3(QK_STREAM_WARPS * 32), 0, stream, pdl, 1, pf, QkResidualNorm(), QkSumSq(),
                                  rope);
    return cudaErrorInvalidValue;
  });
}
#endif
