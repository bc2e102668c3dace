// w4a16_launch_dot2.h — how the kernels over the dot2 layout (w4a16_dot2.h, w4a16_wmma.h) are launched, for every
// platform's launcher (w4a16_ext.cu on HIP and CUDA, w4a16_host.cpp on the CPU): their grids, and the instance a
// launch takes, handed to f as the kernel's function.
#pragma once

#include "w4a16_dot2.h"
#include "w4a16_launch.h"
#include "w4a16_wmma.h"

// x: QK_DOT2_THREADS threads of 4 columns a block; z: the splits of K, k_split each.
inline dim3 qk_dot2_grid(int N, int K, int k_split) {
  return dim3((N + 4 * QK_DOT2_THREADS - 1) / (4 * QK_DOT2_THREADS), 1, (K + k_split - 1) / k_split);
}
// x: 64 columns a block; y: 32 rows; z: the splits of K, k_split each.
inline dim3 qk_wmma_grid(int M, int N, int K, int k_split) {
  return dim3((N + 63) / 64, (M + 31) / 32, (K + k_split - 1) / k_split);
}
// f(qk_dot2_decode<...>) for M rows (1..8: the instance of 1, 2, 4 or 8 rows), the activation type and symmetry.
template <typename F>
void qk_dot2_instance(bool bf16, bool sym, int M, F&& f) {
  qk_by_type(bf16, sym, [&](auto tag, auto s) {
    using Tag = decltype(tag);
    constexpr bool SYM = decltype(s)::value;
    if (M == 1)
      f(qk_dot2_decode<Tag, 1, SYM>);
    else if (M == 2)
      f(qk_dot2_decode<Tag, 2, SYM>);
    else if (M <= 4)
      f(qk_dot2_decode<Tag, 4, SYM>);
    else
      f(qk_dot2_decode<Tag, 8, SYM>);
  });
}
// f(qk_wmma_prefill<...>) for the activation type and symmetry.
template <typename F>
void qk_wmma_instance(bool bf16, bool sym, F&& f) {
  qk_by_type(bf16, sym, [&](auto tag, auto s) { f(qk_wmma_prefill<decltype(tag), decltype(s)::value>); });
}
