// w4a16_launch_wgmma_ws.h — the warp-specialized wgmma kernel's instances (w4a16_wgmma_ws_cuda.h), for the three
// translation units that compile them in parallel: w4a16_launch_wgmma_ws.cu (64 and 128 tokens a block, the launcher
// and the packing of x), w4a16_launch_wgmma_ws_big.cu (256 tokens, whose 128 accumulators a thread take ptxas the
// longest) and w4a16_launch_wgmma_ws_small.cu (16 and 32 tokens).
#pragma once

#include "w4a16_launch.h"
#include "w4a16_wgmma_ws_cuda.h"

#if QK_IS_CUDA
// The kernel's tensor maps over a's xp, w and meta for bt tokens and ks chunks a stage, each block of a multicast
// pair loading half of the x box (w4a16_launch_wgmma_ws.cu); cudaErrorInvalidValue where the driver's encoder refuses
// them (an operand not 16-byte aligned) or is missing.
cudaError_t qk_ws_encode_maps(const QkMmaArgs& a, int bt, int ks, bool sym, int multicast, QkWsMaps* maps);

// sk_blocks > 0: stream-K (QkWsWalk) over grid (ctas, 1, 1), the rest of the tiles after whole waves cut among the
// first sk_blocks blocks (at most ctas, each at least a step), no cluster or multicast, the workspace as deep as
// QkWsWalk::max_splits. pdl: as a programmatic dependent launch (of the packing of x: qk_launch_wgmma_pack_x). probe:
// QkWsMaps::probe, for the PROBE instances. PL, PROBE, GLU: the pipelined, the probe and the gated pair's instances
// (qk_wgmma_ws; GLU takes no cluster).
template <typename Tag, int BT, bool SYM, int STAGES, int KS, bool PL = false, bool PROBE = false, bool GLU = false>
cudaError_t qk_ws_instance(const QkMmaArgs& a, int cluster, int multicast, int sk_blocks, bool pdl, dim3 grid,
                           cudaStream_t stream, int probe = 0) {
  if (GLU && cluster > 1) return cudaErrorInvalidValue;
  auto kernel = qk_wgmma_ws<Tag, BT, SYM, STAGES, KS, PL, PROBE, GLU>;
  constexpr int smem = qk_ws_smem_bytes(BT, STAGES, KS, SYM);
  static_assert(smem <= 227 * 1024 - 256, "the stage ring must fit Hopper's 227 KB of shared memory per block");
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  if (multicast != 1 && (multicast != 2 || grid.z > 1 || grid.y % 2)) return cudaErrorInvalidValue;
  const QkWsWalk walk(sk_blocks > 0 ? (int)grid.x : 0, sk_blocks, a.M, a.N, a.K, BT, KS);
  if (sk_blocks > 0 &&
      (sk_blocks > (int)grid.x || grid.y != 1 || grid.z != 1 || cluster > 1 || multicast != 1 || !walk.valid()))
    return cudaErrorInvalidValue;
  QkWsMaps maps;
  const cudaError_t enc = qk_ws_encode_maps(a, BT, KS, SYM, multicast, &maps);
  if (enc != cudaSuccess) return enc;
  maps.probe = probe;
  const dim3 dims = multicast > 1 ? dim3(1, multicast, 1) : dim3(1, 1, cluster > 1 ? cluster : 1);
  return qk_launch_mma_kernel_in(kernel, a, grid, dim3(qk_ws_threads(BT, PL)), smem, stream, pdl, dims, maps, walk);
}

// The 128-accumulator instances (w4a16_launch_wgmma_ws_big.cu), glu: the gated pair's; cudaErrorInvalidValue for any
// other bt.
cudaError_t qk_launch_wgmma_ws_big(const QkMmaArgs& a, bool bf16, bool sym, int bt, int cluster, int multicast,
                                   int sk_blocks, bool pdl, dim3 grid, cudaStream_t stream, bool glu);
// The instances of 16 and 32 tokens (w4a16_launch_wgmma_ws_small.cu), pipelined: 32 tokens' pipelined instance,
// probe > 0: the probe's, glu: the gated pair's; cudaErrorInvalidValue for any other bt (or pipelined at 16, or two of
// pipelined, probe and glu).
cudaError_t qk_launch_wgmma_ws_small(const QkMmaArgs& a, bool bf16, bool sym, int bt, int cluster, int multicast,
                                     int sk_blocks, bool pdl, dim3 grid, cudaStream_t stream, int probe,
                                     bool pipelined, bool glu);
#endif
