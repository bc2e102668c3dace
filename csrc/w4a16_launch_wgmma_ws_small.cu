// w4a16_launch_wgmma_ws_small.cu — the warp-specialized wgmma kernel's instances for few tokens: 16 tokens a block,
// 2 chunks a stage, 7 stages, two blocks a multiprocessor; 32 tokens, 4 chunks, 6 stages (205-217 KB), also pipelined
// (qk_wgmma_ws's PL: a producer warpgroup, the next stage dequantized while this one's MMAs run), and both tiles'
// probe instances (PROBE, ops.ws_probe). The weights of
// a 128-row block stream through the ring (8 or 16 KB a stage) as at 64 tokens, against a tile of x a quarter or an
// eighth as large and MMAs of N = 16 or 32: decode-sized batches on the bulk-copy path.
#include "w4a16_launch_wgmma_ws.h"

#if QK_IS_CUDA
cudaError_t qk_launch_wgmma_ws_small(const QkMmaArgs& a, bool bf16, bool sym, int bt, int cluster, int multicast,
                                     int sk_blocks, bool pdl, dim3 grid, cudaStream_t stream, int probe,
                                     bool pipelined, bool glu) {
  return qk_by_type(bf16, sym, [&](auto tag, auto s) {
    using Tag = decltype(tag);
    constexpr bool SYM = decltype(s)::value;
    if (glu) {  // the gated pair's instances
      if (pipelined || probe > 0) return cudaErrorInvalidValue;
      if (bt == 16)
        return qk_ws_instance<Tag, 16, SYM, 7, qk_ws_ks(16), false, false, true>(a, cluster, multicast, sk_blocks, pdl,
                                                                                 grid, stream);
      if (bt == 32)
        return qk_ws_instance<Tag, 32, SYM, 6, qk_ws_ks(32), false, false, true>(a, cluster, multicast, sk_blocks, pdl,
                                                                                 grid, stream);
      return cudaErrorInvalidValue;
    }
    // two blocks a multiprocessor (qk_ws_blocks_per_sm): 7 stages of 2 chunks (92-99 KB)
    if (probe > 0) {  // the diagnostic's instances (ops.ws_probe)
      if (pipelined) return cudaErrorInvalidValue;
      if (bt == 16)
        return qk_ws_instance<Tag, 16, SYM, 7, qk_ws_ks(16), false, true>(a, cluster, multicast, sk_blocks, pdl, grid,
                                                                          stream, probe);
      if (bt == 32)
        return qk_ws_instance<Tag, 32, SYM, 6, qk_ws_ks(32), false, true>(a, cluster, multicast, sk_blocks, pdl, grid,
                                                                          stream, probe);
      return cudaErrorInvalidValue;
    }
    if (bt == 32 && pipelined)
      return qk_ws_instance<Tag, 32, SYM, 6, qk_ws_ks(32), true>(a, cluster, multicast, sk_blocks, pdl, grid, stream);
    if (pipelined) return cudaErrorInvalidValue;
    if (bt == 16)
      return qk_ws_instance<Tag, 16, SYM, 7, qk_ws_ks(16)>(a, cluster, multicast, sk_blocks, pdl, grid, stream);
    if (bt == 32)
      return qk_ws_instance<Tag, 32, SYM, 6, qk_ws_ks(32)>(a, cluster, multicast, sk_blocks, pdl, grid, stream);
    return cudaErrorInvalidValue;
  });
}
#endif
