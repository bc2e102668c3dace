// w4a16_launch_wgmma.cu — the Hopper wgmma kernel's instances with the weights in registers, its launcher, and the
// packing of x for its BULK pipeline.
#include <algorithm>

#include "w4a16_launch_wgmma.h"

#if QK_IS_CUDA
// x [M, K] -> out [K / 64][M][64] for the BULK pipeline: row r of chunk c is x[r, index[64c .. 64c + 63]] (the
// act-order and MMA k order of PackedLinear.wgmma_x_index) with its 16-byte unit u stored at u ^ (r % 8): the image of
// the kernel's 128B-swizzled tile, so that one bulk copy brings a chunk's rows of a token tile. One 16-byte unit a
// thread, grid-stride.
QK_GLOBAL void qk_wgmma_pack_x(const uint16_t* __restrict__ x, const int64_t* __restrict__ index,
                               uint4* __restrict__ out, int M, int K) {
  const long long units = (long long)M * (K / 8);
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < units; i += (long long)gridDim.x * blockDim.x) {
    const int v = (int)(i % 8), r = (int)((i / 8) % M), c = (int)(i / 8 / M);
    const int64_t* idx = index + (size_t)c * 64 + (size_t)((v ^ (r & 7)) * 8);
    const uint16_t* row = x + (size_t)r * K;
    uint32_t word[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) word[j] = (uint32_t)row[idx[2 * j]] | ((uint32_t)row[idx[2 * j + 1]] << 16);
    out[i] = make_uint4(word[0], word[1], word[2], word[3]);
  }
}

cudaError_t qk_launch_wgmma_pack_x(const uint16_t* x, const int64_t* index, uint4* out, int M, int K,
                                   cudaStream_t stream) {
  const long long units = (long long)M * (K / 8);
  const int blocks = (int)std::min<long long>((units + 255) / 256, 1 << 16);
  if (blocks > 0) qk_wgmma_pack_x<<<blocks, 256, 0, stream>>>(x, index, out, M, K);
  return cudaGetLastError();
}

cudaError_t qk_launch_wgmma_regs(const QkMmaArgs& a, bool bf16, bool sym, int bt, bool dense, int cluster, dim3 grid,
                                 cudaStream_t stream) {
  return qk_wgmma_instances<QK_WGMMA_REGS>(a, bf16, sym, bt, dense, cluster, grid, stream);
}

cudaError_t qk_launch_wgmma(const QkMmaArgs& a, bool bf16, bool sym, int bt, bool dense, int pipe, int cluster,
                            dim3 grid, cudaStream_t stream) {
  switch (pipe) {
    case QK_WGMMA_REGS: return qk_launch_wgmma_regs(a, bf16, sym, bt, dense, cluster, grid, stream);
    case QK_WGMMA_WSM: return qk_launch_wgmma_wsm(a, bf16, sym, bt, dense, cluster, grid, stream);
    case QK_WGMMA_MBAR: return qk_launch_wgmma_mbar(a, bf16, sym, bt, dense, cluster, grid, stream);
    case QK_WGMMA_BULK: return qk_launch_wgmma_bulk(a, bf16, sym, bt, dense, cluster, grid, stream);
    default: return cudaErrorInvalidValue;
  }
}
#endif
