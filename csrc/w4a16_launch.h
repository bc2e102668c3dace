// w4a16_launch.h — launchers of the CUDA kernel families, each defined in its own translation unit
// (w4a16_launch_{stream,staged,wgmma}.cu, no torch in them) so that the extension's build compiles them in
// parallel. w4a16_ext.cu checks the operands and calls these; each returns the launch's error.
#pragma once

#include "platform.h"
#include "w4a16_prefetch.h"
#include "w4a16_residual_norm.h"
#include "w4a16_rope.h"
#include "w4a16_trace.h"

#include <type_traits>

// f(Tag(), std::bool_constant<SYM>()) for a launch's activation type and symmetry: the one place a launcher turns its
// runtime bf16 and sym flags into an instance's template arguments (both platforms: w4a16_ext.cu launches the dot2
// and WMMA kernels itself).
template <typename F>
auto qk_by_type(bool bf16, bool sym, F&& f) -> decltype(f(QkF16(), std::true_type())) {
  if (bf16) return sym ? f(QkBF16(), std::true_type()) : f(QkBF16(), std::false_type());
  return sym ? f(QkF16(), std::true_type()) : f(QkF16(), std::false_type());
}

#if QK_IS_CUDA
#include <cuda_runtime.h>

#include <cstdint>

// The operands every kernel over the "mma" layout takes (w4a16_mma_cuda.h).
struct QkMmaArgs {
  const uint16_t* x;
  const uint4* w;
  const uint16_t* meta;
  const uint16_t* bias;
  uint16_t* out;
  float* ws;
  int* counters;
  int M, N, K, group_size, chunks_per_split;
};

// kernel(args...) through cudaLaunchKernelEx; pdl adds the programmatic-stream-serialization attribute (the kernel
// must be written for it: qk_pdl_wait in w4a16_mma_cuda.h); cluster: the thread-block cluster's dims, where it has
// more than one block (sm_90+). Above 8 blocks, the portable limit, the kernel is allowed the larger sizes the GPU
// supports (16 on Hopper).
template <typename... Params, typename... Args>
cudaError_t qk_launch_ex(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                         dim3 cluster, const Args&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[2];
  int n = 0;
  if (pdl) {
    attribute[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster.x * cluster.y * cluster.z > 1) {
    if (cluster.x * cluster.y * cluster.z > 8) {
      const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
      if (err != cudaSuccess) return err;
    }
    attribute[n].id = cudaLaunchAttributeClusterDimension;
    attribute[n].val.clusterDim.x = cluster.x;
    attribute[n].val.clusterDim.y = cluster.y;
    attribute[n++].val.clusterDim.z = cluster.z;
  }
  config.attrs = attribute;
  config.numAttrs = n;
  return cudaLaunchKernelEx(&config, kernel, args...);
}
// One mma-layout kernel instance (qk_launch_ex); extra: the kernel's parameters after QkMmaArgs's, if it has any.
template <typename... Params, typename... Extra>
cudaError_t qk_launch_mma_kernel_in(void (*kernel)(Params...), const QkMmaArgs& a, dim3 grid, dim3 block, size_t smem,
                                    cudaStream_t stream, bool pdl, dim3 cluster, const Extra&... extra) {
  return qk_launch_ex(kernel, grid, block, smem, stream, pdl, cluster, a.x, a.w, a.meta, a.bias, a.out, a.ws,
                      a.counters, a.M, a.N, a.K, a.group_size, a.chunks_per_split, extra...);
}
// The same with cluster > 1 making every cluster blocks along z one cluster (the split-K reduction's).
template <typename... Params, typename... Extra>
cudaError_t qk_launch_mma_kernel(void (*kernel)(Params...), const QkMmaArgs& a, dim3 grid, dim3 block, size_t smem,
                                 cudaStream_t stream, bool pdl = false, int cluster = 1, const Extra&... extra) {
  return qk_launch_mma_kernel_in(kernel, a, grid, block, smem, stream, pdl, dim3(1, 1, cluster > 1 ? cluster : 1),
                                 extra...);
}

// qk_mma_stream (w4a16_mma_cuda.h), mt token tiles (1, 2, 4, 8); wk: the block's warps share one tile and split its
// chunks (mt <= 4, else cudaErrorInvalidValue); pdl: as a programmatic dependent launch; cluster: as above; pf: what
// its blocks request into the L2 as they finish their reads (the next layer's weights; pf.n = 0: nothing; with wk
// only, else cudaErrorInvalidValue); glu: the layer is a gated pair (packing.glu_order) and a.out [M, N / 2] gets
// silu(gate) * up (with wk and no prefetch only, else cudaErrorInvalidValue); rn: the residual add and RMSNorm it
// folds in (QkResidualNorm; all null: none); sq: the stream's sums of squares it writes (with rn.residual) or reads
// (with rn.rms) (QkSumSq; all null: none); wk_warps: the warps of a block with wk, QK_STREAM_WARPS or 8 (mt 1, no
// prefetch; else cudaErrorInvalidValue).
cudaError_t qk_launch_stream(const QkMmaArgs& a, bool bf16, bool sym, int mt, bool wk, bool pdl, int cluster, dim3 grid,
                             const QkPrefetchRanges& pf, bool glu, const QkResidualNorm& rn, const QkSumSq& sq,
                             int wk_warps, cudaStream_t stream);
// qk_mma_stream's rotary instances (QkRope): a fused q/k/v projection at one token tile (M <= 8), its warps sharing a
// tile, unsplit (grid (1, N / 16, 1), a.chunks_per_split K / 64), a.out the step's q [M, heads * head_dim]; pdl: as a
// programmatic dependent launch; wk_warps: QK_STREAM_WARPS or 8 (else cudaErrorInvalidValue).
cudaError_t qk_launch_stream_rope(const QkMmaArgs& a, bool bf16, bool sym, bool pdl, int wk_warps, const QkRope& rope,
                                  cudaStream_t stream);
// The decode kernel's trace (w4a16_trace.h; QK_STREAM_TRACE builds): copies up to max records into host, empties the
// buffer and returns how many it copied; -1 where the build has no trace, -2 on a CUDA error.
int qk_stream_trace_read(QkTraceRecord* host, int max);
// qk_mma_mlp (w4a16_mma_cuda.h): a decode step's gated MLP, M <= 8, in one launch of n1 + n2 splits blocks.
struct QkMlpArgs {
  const uint16_t* x;
  const uint4 *w1, *w2;
  const uint16_t *meta1, *meta2;
  uint16_t *mid, *out;
  float* ws;
  int *counters, *sync;
  int M, N1, K1, N2, group1, group2, chunks_per_split;
};
cudaError_t qk_launch_mlp(const QkMlpArgs& a, bool bf16, bool sym, bool pdl, cudaStream_t stream);
// qk_mma_staged, 8 token tiles.
cudaError_t qk_launch_staged(const QkMmaArgs& a, bool bf16, bool sym, dim3 grid, cudaStream_t stream);
// qk_wgmma_gemm: bt tokens per block (64, 128, 256); dense: the two-blocks-per-multiprocessor instance (bt <= 128);
// wsm: the weights and scales through the shared-memory stages with x instead of one step ahead in registers;
// cluster: as above.
cudaError_t qk_launch_wgmma(const QkMmaArgs& a, bool bf16, bool sym, int bt, bool dense, bool wsm, int cluster,
                            dim3 grid, cudaStream_t stream);
// qk_wgmma_ws (w4a16_wgmma_ws_cuda.h), the warp-specialized kernel: x packed by qk_launch_wgmma_pack_x, bt tokens
// per block (64, 128, or 256 without split-K); cluster: as above; multicast 2: pairs of blocks along y one cluster
// that share each x tile (grid.z 1, grid.y even), else 1. Anything else, or x, w or meta not 16-byte aligned (the
// tensor maps' rule): cudaErrorInvalidValue. sk_blocks > 0: stream-K over the grid's blocks (grid (ctas, 1, 1)), what is
// left after whole waves cut among the first sk_blocks (QkWsWalk in w4a16_wgmma_ws_cuda.h), no cluster or multicast.
// pdl: as a programmatic dependent launch of the packing of x before it (its blocks start while that kernel runs,
// and request their first weights and scales; x is read only after it has finished). probe 1 to 4: a diagnostic,
// not the product (QkWsMaps::probe), else 0. pipelined: at 32 tokens, the pipelined instance (256 always are). glu:
// the layer is a gated pair (packing.glu_order) and a.out [M, N / 2] gets silu(gate) * up (no cluster, no probe, not
// pipelined).
cudaError_t qk_launch_wgmma_ws(const QkMmaArgs& a, bool bf16, bool sym, int bt, int cluster, int multicast,
                               int sk_blocks, bool pdl, dim3 grid, cudaStream_t stream, int probe = 0,
                               bool pipelined = false, bool glu = false);
// qk_wgmma_pack_x: x [M, K] into [K / 64][M][64], k in index's order, each row's 16-byte units swizzled; index: int32,
// words: [K / 2] 32-bit words of x's row (pairs of k), else [K] k; null: no act-order, the MMA's k order itself
// (qk_wgmma_pack_x_plain; x 16-byte aligned).
cudaError_t qk_launch_wgmma_pack_x(const uint16_t* x, const int32_t* index, bool words, uint4* out, int M, int K,
                                   cudaStream_t stream);
// qk_l2_prefetch (w4a16_prefetch.cu): requests the ranges into the L2 cache and returns; the copies finish after the
// kernel.
cudaError_t qk_launch_l2_prefetch(const QkPrefetchRanges& r, cudaStream_t stream);
// qk_mma_dequant: the [N, K] weight.
cudaError_t qk_launch_dequant(const uint4* w, const uint16_t* meta, uint16_t* out, int N, int K, int group_size,
                              bool bf16, bool sym, cudaStream_t stream);
#endif
