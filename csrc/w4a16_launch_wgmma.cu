// w4a16_launch_wgmma.cu — the Hopper wgmma kernel's instances (w4a16_wgmma_cuda.h) and their launcher.
#include "w4a16_launch.h"
#include "w4a16_wgmma_cuda.h"

#if QK_IS_CUDA
namespace {

template <typename Tag, int BT, bool SYM, int STAGES, int KS, int MINB, bool WSM>
cudaError_t wgmma(const QkMmaArgs& a, dim3 grid, cudaStream_t stream) {
  auto kernel = qk_wgmma_gemm<Tag, BT, SYM, STAGES, KS, MINB, WSM>;
  const int smem = qk_wgmma_smem_bytes(BT, STAGES, KS, WSM, SYM);
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  return qk_launch_mma_kernel(kernel, a, grid, dim3(QK_WGMMA_THREADS), smem, stream);
}

// The instances: 64 tokens x 4 chunks per step, 128 x 2, 256 x 1 (one block per multiprocessor), and the dense
// (two blocks per multiprocessor, registers capped) 64 x 2 and 128 x 1; each with the weights in registers or, wsm,
// through the shared-memory stages.
template <typename Tag, bool SYM, bool WSM>
cudaError_t wgmma_bt(const QkMmaArgs& a, int bt, bool dense, dim3 grid, cudaStream_t stream) {
  if (bt == 64 && dense) return wgmma<Tag, 64, SYM, 3, 2, 2, WSM>(a, grid, stream);
  if (bt == 64) return wgmma<Tag, 64, SYM, 4, 4, 1, WSM>(a, grid, stream);
  if (bt == 128 && dense) return wgmma<Tag, 128, SYM, 4, 1, 2, WSM>(a, grid, stream);
  if (bt == 128) return wgmma<Tag, 128, SYM, 3, 2, 1, WSM>(a, grid, stream);
  return wgmma<Tag, 256, SYM, 4, 1, 1, WSM>(a, grid, stream);
}

template <typename Tag, bool SYM>
cudaError_t wgmma_wsm(const QkMmaArgs& a, int bt, bool dense, bool wsm, dim3 grid, cudaStream_t stream) {
  return wsm ? wgmma_bt<Tag, SYM, true>(a, bt, dense, grid, stream) : wgmma_bt<Tag, SYM, false>(a, bt, dense, grid, stream);
}

}  // namespace

cudaError_t qk_launch_wgmma(const QkMmaArgs& a, bool bf16, bool sym, int bt, bool dense, bool wsm, dim3 grid,
                            cudaStream_t stream) {
  if (bf16) return sym ? wgmma_wsm<QkBF16, true>(a, bt, dense, wsm, grid, stream)
                       : wgmma_wsm<QkBF16, false>(a, bt, dense, wsm, grid, stream);
  return sym ? wgmma_wsm<QkF16, true>(a, bt, dense, wsm, grid, stream)
             : wgmma_wsm<QkF16, false>(a, bt, dense, wsm, grid, stream);
}
#endif
