// w4a16_launch_wgmma_ws.cu — the warp-specialized Hopper kernel's instances (w4a16_wgmma_ws_cuda.h: qk_wgmma_ws),
// their launcher, and the packing of x they read.
#include <algorithm>
#include <type_traits>

#include "w4a16_launch_wgmma_ws.h"

#if QK_IS_CUDA
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled_v12000

template <bool WORDS>
QK_GLOBAL void qk_wgmma_pack_x(const uint16_t* __restrict__ x, const int32_t* __restrict__ index,
                               uint4* __restrict__ out, int M, int K) {
  qk_pdl_trigger();  // the warp-specialized kernel after it, a programmatic launch, may start its prologue now
  constexpr int R = QK_PACK_ROWS;
  const int row_blocks = (M + 8 * R - 1) / (8 * R);
  const long long units = (long long)(K / 64) * row_blocks * 64;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < units;
       i += (long long)gridDim.x * blockDim.x) {
    // unit v of rows r0 + 8q of chunk c: 8 threads a row's 128 bytes, a warp 4 rows
    const int v = (int)(i % 8), r0 = (int)((i / 8) % 8) + (int)((i / 64) % row_blocks) * 8 * R;
    const int c = (int)(i / 64 / row_blocks), u = v ^ (r0 & 7);  // the logical unit stored at unit v
    uint32_t word[R][4];
    if constexpr (WORDS) {  // the unit's 4 words of x's row
      const int4 w = __ldg(reinterpret_cast<const int4*>(index + c * 32 + u * 4));
#pragma unroll
      for (int q = 0; q < R; ++q) {
        const uint32_t* row = reinterpret_cast<const uint32_t*>(x + (size_t)min(r0 + 8 * q, M - 1) * K);
        word[q][0] = __ldg(row + w.x), word[q][1] = __ldg(row + w.y), word[q][2] = __ldg(row + w.z);
        word[q][3] = __ldg(row + w.w);
      }
    } else {  // the unit's 8 k
      const int4 a = __ldg(reinterpret_cast<const int4*>(index + c * 64 + u * 8));
      const int4 b = __ldg(reinterpret_cast<const int4*>(index + c * 64 + u * 8 + 4));
#pragma unroll
      for (int q = 0; q < R; ++q) {
        const uint16_t* row = x + (size_t)min(r0 + 8 * q, M - 1) * K;
        word[q][0] = (uint32_t)__ldg(row + a.x) | ((uint32_t)__ldg(row + a.y) << 16);
        word[q][1] = (uint32_t)__ldg(row + a.z) | ((uint32_t)__ldg(row + a.w) << 16);
        word[q][2] = (uint32_t)__ldg(row + b.x) | ((uint32_t)__ldg(row + b.y) << 16);
        word[q][3] = (uint32_t)__ldg(row + b.z) | ((uint32_t)__ldg(row + b.w) << 16);
      }
    }
#pragma unroll
    for (int q = 0; q < R; ++q)
      if (r0 + 8 * q < M)
        out[((size_t)c * M + r0 + 8 * q) * 8 + v] = make_uint4(word[q][0], word[q][1], word[q][2], word[q][3]);
  }
}

QK_GLOBAL void __launch_bounds__(256) qk_wgmma_pack_x_plain(const uint16_t* __restrict__ x, uint4* __restrict__ out,
                                                             int M, int K) {
  qk_pdl_trigger();
  constexpr int R = QK_PACK_ROWS, PAD = 40;  // rows of the staging tile 40 words apart: its reads hit 32 banks
  __shared__ __align__(16) uint32_t stage[8][4 * PAD];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, q = lane >> 3, p = lane & 7;
  uint32_t* s = stage[warp] + q * PAD;
  const int chunks = K / 64;
  const long long tasks = (long long)chunks * ((M + 4 * R - 1) / (4 * R));
  for (long long t = (long long)blockIdx.x * 8 + warp; t < tasks; t += (long long)gridDim.x * 8) {
    // rows r0 + 4i + q of chunk c: a row's 128 bytes 8 lanes, 16 bytes a lane, every row's load in flight
    const int c = (int)(t % chunks), r0 = (int)(t / chunks) * 4 * R;
    uint4 v[R];
#pragma unroll
    for (int i = 0; i < R; ++i)
      v[i] = __ldg(reinterpret_cast<const uint4*>(x + (size_t)min(r0 + 4 * i + q, M - 1) * K + c * 64) + p);
#pragma unroll
    for (int i = 0; i < R; ++i) {
      __syncwarp();  // the lanes have read the previous rows out of the staging tile
      *reinterpret_cast<uint4*>(s + 4 * p) = v[i];
      __syncwarp();
      // logical unit u of the chunk is the words u, 8 + u, 16 + u, 24 + u (PackedLinear.wgmma_x_index: k = 64c +
      // 16 tig + 4j + 2h + e sits at logical 16j + 8h + 2 tig + e, i.e. word tig of unit 2j + h); stored at u ^ (r % 8)
      const int r = r0 + 4 * i + q, u = p ^ (r & 7);
      if (r < M) out[((size_t)c * M + r) * 8 + p] = make_uint4(s[u], s[8 + u], s[16 + u], s[24 + u]);
    }
  }
}

cudaError_t qk_launch_wgmma_pack_x(const uint16_t* x, const int32_t* index, bool words, uint4* out, int M, int K,
                                   cudaStream_t stream) {
  if (index == nullptr) {
    const long long tasks = (long long)(K / 64) * ((M + 4 * QK_PACK_ROWS - 1) / (4 * QK_PACK_ROWS));
    const int blocks = (int)std::min<long long>((tasks + 7) / 8, 1 << 16);
    if (blocks == 0) return cudaGetLastError();
    qk_wgmma_pack_x_plain<<<blocks, 256, 0, stream>>>(x, out, M, K);
    return cudaGetLastError();
  }
  const long long n = (long long)(K / 64) * ((M + 8 * QK_PACK_ROWS - 1) / (8 * QK_PACK_ROWS)) * 64;
  const int blocks = (int)std::min<long long>((n + 255) / 256, 1 << 16);
  if (blocks == 0) return cudaGetLastError();
  if (words)
    qk_wgmma_pack_x<true><<<blocks, 256, 0, stream>>>(x, index, out, M, K);
  else
    qk_wgmma_pack_x<false><<<blocks, 256, 0, stream>>>(x, index, out, M, K);
  return cudaGetLastError();
}

namespace {

// cuTensorMapEncodeTiled, from the driver through the runtime (no link to libcuda); null where it is missing.
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

// A 3-D map over base: dims and box innermost first, the byte strides of dims 1 and 2; no swizzle, zeros out of
// bounds.
bool encode_3d(CUtensorMap* map, CUtensorMapDataType type, const void* base, const cuuint64_t (&dims)[3],
               const cuuint64_t (&strides)[2], const cuuint32_t (&box)[3]) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  const cuuint32_t unit[3] = {1, 1, 1};
  return encode && encode(map, type, 3, const_cast<void*>(base), dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                          CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// The instances of this translation unit: 64 tokens x 4 chunks a stage, 4 stages; 128 x 2, 5 stages (208-216 KB).
// 256 tokens are in w4a16_launch_wgmma_ws_big.cu (qk_launch_wgmma_ws_big), 16 and 32 in w4a16_launch_wgmma_ws_small.cu.
template <typename Tag, bool SYM>
cudaError_t ws_tile(const QkMmaArgs& a, int bt, int cluster, int mc, int sk, bool pdl, dim3 grid,
                    cudaStream_t stream, int probe, bool pipelined, bool glu) {
  constexpr bool bf16 = std::is_same<Tag, QkBF16>::value;
  if (bt < 64)
    return qk_launch_wgmma_ws_small(a, bf16, SYM, bt, cluster, mc, sk, pdl, grid, stream, probe, pipelined, glu);
  if ((pipelined && bt != 256) || probe > 0) return cudaErrorInvalidValue;  // 256 tokens always are; probes: 16, 32
  if (bt == 64)
    return glu ? qk_ws_instance<Tag, 64, SYM, 4, qk_ws_ks(64), false, false, true>(a, cluster, mc, sk, pdl, grid, stream)
               : qk_ws_instance<Tag, 64, SYM, 4, qk_ws_ks(64)>(a, cluster, mc, sk, pdl, grid, stream);
  if (bt == 128)
    return glu ? qk_ws_instance<Tag, 128, SYM, 5, qk_ws_ks(128), false, false, true>(a, cluster, mc, sk, pdl, grid,
                                                                                     stream)
               : qk_ws_instance<Tag, 128, SYM, 5, qk_ws_ks(128)>(a, cluster, mc, sk, pdl, grid, stream);
  return qk_launch_wgmma_ws_big(a, bf16, SYM, bt, cluster, mc, sk, pdl, grid, stream, glu);
}

}  // namespace

cudaError_t qk_ws_encode_maps(const QkMmaArgs& a, int bt, int ks, bool sym, int multicast, QkWsMaps* maps) {
  const cuuint64_t chunks = a.K / 64, groups = a.K / a.group_size, tiles = a.N / 16, mv = sym ? 4 : 8;
  // a multicast pair: each block loads half of the x box, half of its chunks (or, one chunk a stage, of its rows)
  const cuuint32_t x_rows = (cuuint32_t)(multicast > 1 && ks == 1 ? bt / 2 : bt),
                   x_chunks = (cuuint32_t)(multicast > 1 && ks > 1 ? ks / 2 : ks);
  maps->multicast = multicast;
  maps->probe = 0;
  const bool ok =
      encode_3d(&maps->x, CU_TENSOR_MAP_DATA_TYPE_UINT16, a.x, {64, (cuuint64_t)a.M, chunks},
                {128, (cuuint64_t)a.M * 128}, {64, x_rows, x_chunks}) &&
      encode_3d(&maps->w, CU_TENSOR_MAP_DATA_TYPE_UINT32, a.w, {128, chunks, tiles}, {512, chunks * 512},
                {128, (cuuint32_t)ks, 8}) &&
      encode_3d(&maps->s, CU_TENSOR_MAP_DATA_TYPE_UINT32, a.meta, {2 * mv, groups, tiles}, {8 * mv, groups * 8 * mv},
                {(cuuint32_t)(2 * mv), (cuuint32_t)(2 * ks), 8});
  return ok ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t qk_launch_wgmma_ws(const QkMmaArgs& a, bool bf16, bool sym, int bt, int cluster, int multicast,
                               int sk_blocks, bool pdl, dim3 grid, cudaStream_t stream, int probe, bool pipelined,
                               bool glu) {
  return qk_by_type(bf16, sym, [&](auto tag, auto s) {
    return ws_tile<decltype(tag), decltype(s)::value>(a, bt, cluster, multicast, sk_blocks, pdl, grid, stream, probe,
                                                      pipelined, glu);
  });
}
#endif
