// w4a16_instances.cu — every kernel instance, with no torch: the translation unit the CI compiles to ISA
// (HIP, gfx1100, clang) or to SASS (CUDA, sm_90, nvcc) to check instructions, registers and spills.
#include "w4a16_dot2.h"
#include "w4a16_wmma.h"

#define QK_DOT2_INSTANCE(TAG, MR, SYM)                                                                       \
  template QK_GLOBAL void qk_dot2_decode<TAG, MR, SYM>(const uint16_t*, const uint32_t*, const uint16_t*,     \
                                                       const uint8_t*, const uint16_t*, uint16_t*, int, int, int, \
                                                       int, int);
#define QK_DOT2_ALL(TAG) \
  QK_DOT2_INSTANCE(TAG, 1, true) QK_DOT2_INSTANCE(TAG, 2, true) QK_DOT2_INSTANCE(TAG, 4, true) \
  QK_DOT2_INSTANCE(TAG, 8, true) QK_DOT2_INSTANCE(TAG, 1, false) QK_DOT2_INSTANCE(TAG, 8, false)
QK_DOT2_ALL(QkF16)
QK_DOT2_ALL(QkBF16)

#define QK_WMMA_INSTANCE(TAG, SYM)                                                                          \
  template QK_GLOBAL void qk_wmma_prefill<TAG, SYM>(const uint16_t*, const uint32_t*, const uint16_t*,       \
                                                    const uint8_t*, const uint16_t*, uint16_t*, int, int, int, \
                                                    int, int);
QK_WMMA_INSTANCE(QkF16, true)
QK_WMMA_INSTANCE(QkF16, false)
QK_WMMA_INSTANCE(QkBF16, true)
QK_WMMA_INSTANCE(QkBF16, false)

#if QK_IS_CUDA
// CUDA: the instances the launchers build (one translation unit each in the extension), so that this check covers
// exactly the kernels the extension runs.
#include "w4a16_launch_stream.cu"
#include "w4a16_launch_staged.cu"
#include "w4a16_launch_wgmma.cu"
#include "w4a16_launch_wgmma_wsm.cu"
#include "w4a16_launch_wgmma_ws.cu"
#include "w4a16_launch_wgmma_ws_big.cu"
#include "w4a16_launch_wgmma_ws_small.cu"
#include "w4a16_prefetch.cu"
#endif
