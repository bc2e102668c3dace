// w4a16_host.cpp — the dot2 decode and WMMA prefill kernels run on the CPU (platform_host.h), with the launches of
// w4a16_ext.cu's dot2_gemm and wmma_gemm (w4a16_launch_dot2.h): a C library that quantkit/kernels/host.py loads, so
// that CI runs the RDNA3 kernels' source against the reference with no GPU. Slow (each GPU thread a fiber, one running at
// a time): tests and measurements only. Built as quantkit/kernels/host.py does:
//
//     g++ -std=c++20 -O1 -DQK_HOST -fno-strict-aliasing -ffp-contract=off -Icsrc -shared -fPIC csrc/w4a16_host.cpp -o libqk_host.so
//
// The operands are w4a16_ext.cu's (contiguous, 16-bit floats as their bits, zeros null when symmetric, bias null or
// [N]); out must be zero when K > k_split. Each returns 0; 1 where w4a16_ext.cu would refuse the sizes; 2 where the
// kernel's threads wait at barriers that cannot open (qk_host_launch).
#include "w4a16_launch_dot2.h"

extern "C" {

int qk_host_dot2_gemm(int bf16, const uint16_t* x, const uint32_t* qweight, const uint16_t* scales,
                      const uint8_t* zeros, const uint16_t* bias, uint16_t* out, int M, int N, int K, int group_size,
                      int k_split) {
  if (M < 1 || M > 8 || N % 4 || K % 8 || k_split % group_size || k_split > QK_DOT2_KSPLIT) return 1;
  bool ok = false;
  qk_dot2_instance(bf16 != 0, zeros == nullptr, M, [&](auto kernel) {
    ok = qk_host_launch(kernel, qk_dot2_grid(N, K, k_split), QK_DOT2_THREADS, x, qweight, scales, zeros, bias, out,
                        M, N, K, group_size, k_split);
  });
  return ok ? 0 : 2;
}

int qk_host_wmma_gemm(int bf16, const uint16_t* x, const uint32_t* qweight, const uint16_t* scales,
                      const uint8_t* zeros, const uint16_t* bias, uint16_t* out, int M, int N, int K, int group_size,
                      int k_split) {
  if (M < 1 || N % 16 || K % 16 || k_split <= 0 || k_split % group_size || k_split % 16) return 1;
  bool ok = false;
  qk_wmma_instance(bf16 != 0, zeros == nullptr, [&](auto kernel) {
    ok = qk_host_launch(kernel, qk_wmma_grid(M, N, K, k_split), QK_WMMA_THREADS, x, qweight, scales, zeros, bias, out,
                        M, N, K, group_size, k_split);
  });
  return ok ? 0 : 2;
}

}  // extern "C"
