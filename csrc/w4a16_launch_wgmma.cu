// w4a16_launch_wgmma.cu — the Hopper wgmma kernel's instances (w4a16_wgmma_cuda.h) and their launcher.
#include "w4a16_launch.h"
#include "w4a16_wgmma_cuda.h"

#if QK_IS_CUDA
namespace {

template <typename Tag, int BT, bool SYM, int STAGES, int KS, int MINB, bool OVL>
cudaError_t wgmma(const QkMmaArgs& a, dim3 grid, cudaStream_t stream) {
  auto kernel = qk_wgmma_gemm<Tag, BT, SYM, STAGES, KS, MINB, OVL>;
  const int smem = qk_wgmma_smem_bytes(BT, STAGES, KS);
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  return qk_launch_mma_kernel(kernel, a, grid, dim3(QK_WGMMA_THREADS), smem, stream);
}

// The instances: 64 tokens x 4 chunks per step, 128 x 2, 256 x 1 (one block per multiprocessor), and the dense
// (two blocks per multiprocessor, registers capped) 64 x 2 and 128 x 1; ovl (dequantization of the next step
// overlapping this step's MMAs) for the dense ones (64 x 1, 128 x 1) and 256 x 1.
template <typename Tag, bool SYM>
cudaError_t wgmma_bt(const QkMmaArgs& a, int bt, bool dense, bool ovl, dim3 grid, cudaStream_t stream) {
  if (bt == 64 && dense) return ovl ? wgmma<Tag, 64, SYM, 4, 1, 2, true>(a, grid, stream)  // two sets of 2 spill
                                    : wgmma<Tag, 64, SYM, 3, 2, 2, false>(a, grid, stream);
  if (bt == 128 && dense) return ovl ? wgmma<Tag, 128, SYM, 4, 1, 2, true>(a, grid, stream)
                                     : wgmma<Tag, 128, SYM, 4, 1, 2, false>(a, grid, stream);
  if (bt == 256) return ovl ? wgmma<Tag, 256, SYM, 4, 1, 1, true>(a, grid, stream)
                            : wgmma<Tag, 256, SYM, 4, 1, 1, false>(a, grid, stream);
  if (ovl) return cudaErrorInvalidValue;
  if (bt == 64) return wgmma<Tag, 64, SYM, 4, 4, 1, false>(a, grid, stream);
  return wgmma<Tag, 128, SYM, 3, 2, 1, false>(a, grid, stream);
}

}  // namespace

cudaError_t qk_launch_wgmma(const QkMmaArgs& a, bool bf16, bool sym, int bt, bool dense, bool ovl, dim3 grid,
                            cudaStream_t stream) {
  if (bf16) return sym ? wgmma_bt<QkBF16, true>(a, bt, dense, ovl, grid, stream)
                       : wgmma_bt<QkBF16, false>(a, bt, dense, ovl, grid, stream);
  return sym ? wgmma_bt<QkF16, true>(a, bt, dense, ovl, grid, stream)
             : wgmma_bt<QkF16, false>(a, bt, dense, ovl, grid, stream);
}
#endif
