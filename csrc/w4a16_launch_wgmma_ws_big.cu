// w4a16_launch_wgmma_ws_big.cu — the warp-specialized wgmma kernel's 128-accumulator instances: 256 tokens a block,
// 1 chunk a stage, 6 stages (228 KB).
#include "w4a16_launch_wgmma_ws.h"

#if QK_IS_CUDA
cudaError_t qk_launch_wgmma_ws_big(const QkMmaArgs& a, bool bf16, bool sym, int bt, int cluster, int multicast,
                                   int sk_blocks, bool pdl, dim3 grid, cudaStream_t stream, bool glu) {
  if (bt != 256) return cudaErrorInvalidValue;
  return qk_by_type(bf16, sym, [&](auto tag, auto s) {
    using Tag = decltype(tag);
    constexpr bool SYM = decltype(s)::value;
    if (glu)
      return qk_ws_instance<Tag, 256, SYM, 6, qk_ws_ks(256), false, false, true>(a, cluster, multicast, sk_blocks, pdl,
                                                                                 grid, stream);
    return qk_ws_instance<Tag, 256, SYM, 6, qk_ws_ks(256)>(a, cluster, multicast, sk_blocks, pdl, grid, stream);
  });
}
#endif
