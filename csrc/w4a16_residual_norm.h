// w4a16_residual_norm.h — the residual add and RMSNorm that the decode kernel (w4a16_mma_cuda.h: qk_mma_stream)
// folds into its epilogue, as its launcher passes them (w4a16_launch.h).
#pragma once

#include <cstdint>

// A decoder layer's residual add and RMSNorm folded into the decode kernel (quantkit.eval.fuse's fused layers, at
// the decode steps' few tokens); all null (the default): the kernel as without it.
//   rms [M, K]: the residual stream h whose RMSNorm is this layer's input. x is then round(h * norm weight), made by
//     the kernel before (next_w, below), and each token's sums are scaled by rsqrt(mean(h^2) + eps) before the bias:
//     the layer of RMSNorm(h), the norm's scale applied after the product rather than before a rounding.
//   residual [M, N]: out = round(residual + round(y)), the stream after the layer's residual add (no gated pair).
//   next_w [N], the next RMSNorm's weight (with residual): also g = round(out * next_w) into g [M, N].
struct QkResidualNorm {
  const uint16_t* rms = nullptr;
  const uint16_t* residual = nullptr;
  const uint16_t* next_w = nullptr;
  uint16_t* g = nullptr;
  float eps = 0.f;
};

// The stream's sums of squares between two folded decode kernels (qk_mma_stream's, beside QkResidualNorm; all null,
// the default: none). A struct of its own, not in QkResidualNorm, whose size the other kernels' temporaries see.
//   out [M, N / 16] fp32 (with rn.residual): each token's sum of squares of the stream it writes over each 16-feature
//     tile (by the fold's instances whose warps share a tile, unsplit or through the workspace, not a cluster), for
//     the RMSNorm that the next kernel folds in.
//   in [M, K / 16] fp32 (with rn.rms): those sums of h from the kernel that wrote h; the block adds up its token's row
//     of them instead of reading h where it can (its warps sharing a tile, unsplit, one token row, K / 16 at most its
//     threads), and reads h's row otherwise.
struct QkSumSq {
  float* out = nullptr;
  const float* in = nullptr;
};
