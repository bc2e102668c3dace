// w4a16_launch_staged.cu — the staged prefill kernel's and the dequantize kernel's instances (w4a16_mma_cuda.h).
#include "w4a16_launch.h"
#include "w4a16_mma_cuda.h"

#if QK_IS_CUDA
namespace {

template <typename Tag, bool SYM>
cudaError_t staged(const QkMmaArgs& a, dim3 grid, cudaStream_t stream) {
  return qk_launch_mma_kernel(qk_mma_staged<Tag, 8, SYM>, a, grid, dim3(QK_STAGED_WARPS * 32), 0, stream);
}

template <typename Tag, bool SYM>
cudaError_t dequant(const uint4* w, const uint16_t* meta, uint16_t* out, int N, int K, int group_size,
                    cudaStream_t stream) {
  const long long threads = (long long)(N / 16) * (K / 64) * 32;
  const unsigned blocks = (unsigned)((threads + 255) / 256);
  qk_mma_dequant<Tag, SYM><<<blocks, 256, 0, stream>>>(w, meta, out, N, K, group_size);
  return cudaGetLastError();
}

}  // namespace

cudaError_t qk_launch_staged(const QkMmaArgs& a, bool bf16, bool sym, dim3 grid, cudaStream_t stream) {
  return qk_by_type(bf16, sym,
                    [&](auto tag, auto s) { return staged<decltype(tag), decltype(s)::value>(a, grid, stream); });
}

cudaError_t qk_launch_dequant(const uint4* w, const uint16_t* meta, uint16_t* out, int N, int K, int group_size,
                              bool bf16, bool sym, cudaStream_t stream) {
  return qk_by_type(bf16, sym, [&](auto tag, auto s) {
    return dequant<decltype(tag), decltype(s)::value>(w, meta, out, N, K, group_size, stream);
  });
}
#endif
