// w4a16_instances.cu — every kernel instance, with no torch: the translation unit the CI compiles to ISA
// (HIP, gfx1100, clang) or to SASS (CUDA, sm_90, nvcc) to check instructions, registers and spills.
#include "w4a16_dot2.h"
#include "w4a16_mma_cuda.h"
#include "w4a16_wgmma_cuda.h"
#include "w4a16_wmma_hip.h"

#define QK_DOT2_INSTANCE(TAG, MR, SYM)                                                                       \
  template QK_GLOBAL void qk_dot2_decode<TAG, MR, SYM>(const uint16_t*, const uint32_t*, const uint16_t*,     \
                                                       const uint8_t*, const uint16_t*, uint16_t*, int, int, int, \
                                                       int, int);
#define QK_DOT2_ALL(TAG) \
  QK_DOT2_INSTANCE(TAG, 1, true) QK_DOT2_INSTANCE(TAG, 2, true) QK_DOT2_INSTANCE(TAG, 4, true) \
  QK_DOT2_INSTANCE(TAG, 8, true) QK_DOT2_INSTANCE(TAG, 1, false) QK_DOT2_INSTANCE(TAG, 8, false)
QK_DOT2_ALL(QkF16)
QK_DOT2_ALL(QkBF16)

#if QK_IS_HIP
#define QK_WMMA_INSTANCE(TAG, SYM)                                                                          \
  template QK_GLOBAL void qk_wmma_prefill<TAG, SYM>(const uint16_t*, const uint32_t*, const uint16_t*,       \
                                                    const uint8_t*, const uint16_t*, uint16_t*, int, int, int, \
                                                    int, int);
QK_WMMA_INSTANCE(QkF16, true)
QK_WMMA_INSTANCE(QkF16, false)
QK_WMMA_INSTANCE(QkBF16, true)
QK_WMMA_INSTANCE(QkBF16, false)
#else
#define QK_MMA_INSTANCE(KERNEL, TAG, MT, SYM)                                                                \
  template QK_GLOBAL void KERNEL<TAG, MT, SYM>(const uint16_t*, const uint4*, const uint16_t*, const uint16_t*,   \
                                               uint16_t*, float*, int*, int, int, int, int, int);
#define QK_RING_INSTANCE(TAG, MT, SYM, R)                                                                     \
  template QK_GLOBAL void qk_mma_stream<TAG, MT, SYM, R>(const uint16_t*, const uint4*, const uint16_t*,        \
                                                         const uint16_t*, uint16_t*, float*, int*, int, int, int, \
                                                         int, int);
#define QK_MMA_ALL(TAG)                                                                                        \
  QK_MMA_INSTANCE(qk_mma_stream, TAG, 1, true) QK_MMA_INSTANCE(qk_mma_stream, TAG, 2, true)                    \
  QK_MMA_INSTANCE(qk_mma_stream, TAG, 4, true) QK_MMA_INSTANCE(qk_mma_stream, TAG, 8, true)                    \
  QK_MMA_INSTANCE(qk_mma_stream, TAG, 1, false) QK_MMA_INSTANCE(qk_mma_staged, TAG, 8, true)                   \
  QK_MMA_INSTANCE(qk_mma_staged, TAG, 8, false)                                                               \
  QK_RING_INSTANCE(TAG, 1, true, 8) QK_RING_INSTANCE(TAG, 2, true, 8) QK_RING_INSTANCE(TAG, 4, true, 4)       \
  QK_RING_INSTANCE(TAG, 8, true, 4) QK_RING_INSTANCE(TAG, 1, false, 8)
QK_MMA_ALL(QkF16)
QK_MMA_ALL(QkBF16)
#define QK_WGMMA_INSTANCE(TAG, BT, SYM, STAGES, KS, MINB)                                                        \
  template QK_GLOBAL void qk_wgmma_gemm<TAG, BT, SYM, STAGES, KS, MINB>(                                         \
      const uint16_t*, const uint4*, const uint16_t*, const uint16_t*, uint16_t*, float*, int*, int, int, int, int, int);
QK_WGMMA_INSTANCE(QkBF16, 64, true, 4, 4, 1)
QK_WGMMA_INSTANCE(QkBF16, 64, true, 3, 2, 2)
QK_WGMMA_INSTANCE(QkBF16, 128, true, 3, 2, 1)
QK_WGMMA_INSTANCE(QkBF16, 128, true, 4, 1, 2)
QK_WGMMA_INSTANCE(QkBF16, 256, true, 4, 1, 1)
QK_WGMMA_INSTANCE(QkF16, 128, false, 3, 2, 1)
template QK_GLOBAL void qk_mma_dequant<QkBF16, true>(const uint4*, const uint16_t*, uint16_t*, int, int, int);
template QK_GLOBAL void qk_mma_dequant<QkF16, false>(const uint4*, const uint16_t*, uint16_t*, int, int, int);
#endif
