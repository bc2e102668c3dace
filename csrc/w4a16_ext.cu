// w4a16_ext.cu — the torch binding: checks shapes and types, picks the template instance, launches.
// Every failure is a one-line message naming the tensor and the value. quantkit/kernels/ops.py calls these and
// owns every policy decision (which path, how many splits); this file only checks and launches.
#include <torch/extension.h>

#include <array>
#include <cstring>
#include <vector>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "w4a16_launch.h"
#include "w4a16_launch_dot2.h"
#include "w4a16_mma_cuda.h"
#include "w4a16_wgmma_cuda.h"
#include "w4a16_wgmma_ws_cuda.h"

namespace {

void check_tensor(const torch::Tensor& t, const char* name, torch::ScalarType dtype, int dim) {
  TORCH_CHECK(t.is_cuda(), name, " must be on the GPU, got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

bool is_bf16(const torch::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == torch::kHalf || x.scalar_type() == torch::kBFloat16,
              "x must be float16 or bfloat16, got ", x.scalar_type());
  return x.scalar_type() == torch::kBFloat16;
}

const uint16_t* u16(const torch::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr()); }
uint16_t* u16_mut(torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr()); }
const uint16_t* opt_u16(const c10::optional<torch::Tensor>& t) { return t ? u16(*t) : nullptr; }

void check_bias(const c10::optional<torch::Tensor>& bias, const torch::Tensor& x, int64_t n) {
  if (!bias) return;
  check_tensor(*bias, "bias", x.scalar_type(), 1);
  TORCH_CHECK(bias->size(0) == n, "bias must have ", n, " elements, got ", bias->size(0));
}

void check_launch(const char* what, cudaError_t err = cudaGetLastError()) {
  TORCH_CHECK(err == cudaSuccess, what, " failed to launch: ", cudaGetErrorString(err));
}

// The operands of the tensor-core kernels over the "mma" layout: types, shapes, alignment. Returns {M, K, N}.
std::array<int64_t, 3> check_mma_operands(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& meta,
                                          const torch::Tensor& out, const torch::Tensor& ws,
                                          const torch::Tensor& counters, int64_t group_size, bool sym,
                                          bool glu = false, int64_t out_cols = -1) {
  check_tensor(x, "x", x.scalar_type(), 2);
  check_tensor(w, "packed weight", torch::kInt32, 4);
  check_tensor(meta, "packed scales", x.scalar_type(), 4);
  check_tensor(out, "out", x.scalar_type(), 2);
  check_tensor(ws, "workspace", torch::kFloat32, 1);
  check_tensor(counters, "counters", torch::kInt32, 1);
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0) * 16;
  TORCH_CHECK(w.size(1) * 64 == K && w.size(2) == 32 && w.size(3) == 4, "packed weight must be [N/16, K/64, 32, 4] with K=",
              K, ", got ", w.sizes());
  TORCH_CHECK(K % group_size == 0 && group_size % 16 == 0 && group_size >= 32,
              "group size must be a multiple of 16, at least 32, dividing K=", K, ", got ", group_size);
  TORCH_CHECK(K < (1 << 20), "K must be below 2^20 (the kernels' group index), got ", K);
  TORCH_CHECK(meta.size(0) == N / 16 && meta.size(1) == K / group_size && meta.size(2) == 8 && meta.size(3) == (sym ? 2 : 4),
              "packed scales must be [N/16, K/group_size, 8, ", (sym ? 2 : 4), "], got ", meta.sizes());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0, "x must be 16-byte aligned");
  // a gated pair's epilogue writes one output per row pair; out_cols >= 0: the caller's own (the rotary epilogue's q)
  const int64_t out_n = out_cols >= 0 ? out_cols : glu ? N / 2 : N;
  TORCH_CHECK(out.size(0) == M && out.size(1) == out_n, "out must be [", M, ", ", out_n, "], got ", out.sizes());
  return {M, K, N};
}

// Split-K (grid.z > 1) needs fp32 partial sums for every split and a counter per output tile, unless the splits of
// a tile are one cluster (cluster == grid.z, at most 16), which reduce through distributed shared memory.
void check_split_workspace(const dim3& grid, int64_t cluster, int64_t M, int64_t N, const torch::Tensor& ws,
                           const torch::Tensor& counters) {
  TORCH_CHECK(cluster <= 1 || (cluster == (int64_t)grid.z && cluster <= 16),
              "cluster must be 0, 1 or the number of splits (", grid.z, ", at most 16), got ", cluster);
  if (grid.z > 1 && cluster <= 1) {
    TORCH_CHECK(ws.numel() >= (int64_t)grid.z * M * N, "workspace must hold splits*M*N = ", grid.z * M * N,
                " floats, has ", ws.numel());
    TORCH_CHECK(counters.numel() >= (int64_t)grid.x * grid.y, "counters must hold ", grid.x * grid.y, ", has ",
                counters.numel());
  }
}

#if QK_IS_CUDA
bool sm90_or_later(const torch::Tensor& x) {  // programmatic dependent launch: compute capability 9.0+
  int major = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x.device().index());
  return major >= 9;
}

QkMmaArgs mma_args(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& meta,
                   const c10::optional<torch::Tensor>& bias, torch::Tensor& out, torch::Tensor& ws,
                   torch::Tensor& counters, int64_t M, int64_t N, int64_t K, int64_t group_size, int64_t per_split) {
  return {u16(x), reinterpret_cast<const uint4*>(w.data_ptr()), u16(meta), opt_u16(bias), u16_mut(out),
          ws.data_ptr<float>(), counters.data_ptr<int>(), (int)M, (int)N, (int)K, (int)group_size, (int)per_split};
}
#endif

}  // namespace

namespace {
// The operands of a kernel over the dot2 layout (shuffled qweight [K/8, N], scales and out in x's type, optional
// uint8 zeros and bias): checked, and the sizes.
struct Dot2Sizes {
  bool bf16;
  int64_t M, K, N;
};
Dot2Sizes check_dot2_operands(const torch::Tensor& x, const torch::Tensor& qweight, const torch::Tensor& scales,
                              const c10::optional<torch::Tensor>& zeros, const c10::optional<torch::Tensor>& bias,
                              const torch::Tensor& out) {
  const bool bf = is_bf16(x);
  check_tensor(x, "x", x.scalar_type(), 2);
  check_tensor(qweight, "qweight", torch::kInt32, 2);
  check_tensor(scales, "scales", x.scalar_type(), 2);
  check_tensor(out, "out", x.scalar_type(), 2);
  const int64_t M = x.size(0), K = x.size(1), N = qweight.size(1);
  TORCH_CHECK(qweight.size(0) * 8 == K, "qweight must be [K/8, N] = [", K / 8, ", N], got ", qweight.sizes());
  TORCH_CHECK(out.size(0) == M && out.size(1) == N, "out must be [", M, ", ", N, "], got ", out.sizes());
  if (zeros) check_tensor(*zeros, "zeros", torch::kUInt8, 2);
  check_bias(bias, x, N);
  return {bf, M, K, N};
}
}  // namespace

// The dot2 decode kernel (docs/formats.md §2); on CUDA it runs with fp32 FMAs standing in for dot2, so the
// HIP design is checked on NVIDIA hardware too. out must be zero when K > k_split.
void dot2_gemm(torch::Tensor x, torch::Tensor qweight, torch::Tensor scales, c10::optional<torch::Tensor> zeros,
               c10::optional<torch::Tensor> bias, torch::Tensor out, int64_t group_size, int64_t k_split) {
  const Dot2Sizes d = check_dot2_operands(x, qweight, scales, zeros, bias, out);
  const bool bf = d.bf16;
  const int64_t M = d.M, K = d.K, N = d.N;
  TORCH_CHECK(N % 4 == 0, "N must be a multiple of 4, got ", N);
  TORCH_CHECK(M >= 1 && M <= 8, "dot2 decode kernel takes M in 1..8, got ", M);
  TORCH_CHECK(k_split % group_size == 0 && k_split <= QK_DOT2_KSPLIT, "k_split must be a multiple of the group size and at most ",
              QK_DOT2_KSPLIT, ", got ", k_split);
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const uint8_t* z = zeros ? zeros->data_ptr<uint8_t>() : nullptr;
  const uint32_t* q = reinterpret_cast<const uint32_t*>(qweight.data_ptr());
  qk_dot2_instance(bf, !zeros.has_value(), (int)M, [&](auto kernel) {
    kernel<<<qk_dot2_grid(N, K, k_split), QK_DOT2_THREADS, 0, stream>>>(u16(x), q, u16(scales), z, opt_u16(bias),
                                                                       u16_mut(out), M, N, K, group_size, k_split);
  });
  check_launch("dot2 decode kernel");
}

// The RDNA3 prefill kernel (w4a16_wmma.h), on the same dot2 layout; on CUDA a stand-in with the same lane layout
// replaces gfx11's WMMA, so the HIP design is checked on NVIDIA hardware too. out must be zero when K > k_split.
void wmma_gemm(torch::Tensor x, torch::Tensor qweight, torch::Tensor scales, c10::optional<torch::Tensor> zeros,
               c10::optional<torch::Tensor> bias, torch::Tensor out, int64_t group_size, int64_t k_split) {
  const Dot2Sizes d = check_dot2_operands(x, qweight, scales, zeros, bias, out);
  const bool bf = d.bf16;
  const int64_t M = d.M, K = d.K, N = d.N;
  TORCH_CHECK(N % 16 == 0 && K % 16 == 0, "the WMMA kernel takes N and K multiples of 16, got ", N, " and ", K);
  TORCH_CHECK(k_split > 0 && k_split % group_size == 0 && k_split % 16 == 0,
              "k_split must be a multiple of the group size and of 16, got ", k_split);
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const uint8_t* z = zeros ? zeros->data_ptr<uint8_t>() : nullptr;
  const uint32_t* q = reinterpret_cast<const uint32_t*>(qweight.data_ptr());
  qk_wmma_instance(bf, !zeros.has_value(), [&](auto kernel) {
    kernel<<<qk_wmma_grid(M, N, K, k_split), QK_WMMA_THREADS, 0, stream>>>(u16(x), q, u16(scales), z, opt_u16(bias),
                                                                          u16_mut(out), M, N, K, group_size, k_split);
  });
  check_launch("WMMA prefill kernel");
}

#if QK_IS_CUDA
namespace {

// 64-k chunks per split for a requested split count (whole chunks, at least one split).
int64_t split_chunks(int64_t K, int64_t splits) {
  const int64_t chunks = K / 64;
  splits = std::max<int64_t>(1, std::min(splits, chunks));
  return (chunks + splits - 1) / splits;
}

// The tokens a block of the wgmma kernel (64, 128, 256) or of the warp-specialized one (also 16 and 32).
void check_wgmma_bt(int64_t bt, bool ws_kernel) {
  TORCH_CHECK(bt == 64 || bt == 128 || bt == 256 || (ws_kernel && (bt == 16 || bt == 32)), "bt must be ",
              ws_kernel ? "16, 32, " : "", "64, 128 or 256, got ", bt);
}

struct WgmmaLaunch {
  dim3 grid;
  QkMmaArgs args;
};

// What both wgmma kernels check before a launch (operands, bt, bias, an sm_90 GPU — wgmma is sm_90a-only — and the
// split-K workspace; ws: the warp-specialized kernel's, which also has 16 and 32 tokens a block), and their grid
// (token tiles of bt, 128 output features a block, the splits) and arguments.
WgmmaLaunch wgmma_launch(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& meta,
                         const c10::optional<torch::Tensor>& bias, torch::Tensor& out, torch::Tensor& ws,
                         torch::Tensor& counters, int64_t group_size, bool sym, int64_t bt, int64_t splits,
                         int64_t cluster, bool ws_kernel, bool glu = false) {
  const auto [M, K, N] = check_mma_operands(x, w, meta, out, ws, counters, group_size, sym, glu);
  check_wgmma_bt(bt, ws_kernel);
  check_bias(bias, x, N);
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x.device().index());
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, x.device().index());
  TORCH_CHECK(major == 9 && minor == 0, "the wgmma kernels need compute capability 9.0, this GPU is ", major, ".",
              minor);
  const int64_t chunks = K / 64, per_split = split_chunks(K, splits);
  const dim3 grid((M + bt - 1) / bt, (N + QK_WGMMA_ROWS - 1) / QK_WGMMA_ROWS, (chunks + per_split - 1) / per_split);
  check_split_workspace(grid, cluster, M, N, ws, counters);
  return {grid, mma_args(x, w, meta, bias, out, ws, counters, M, N, K, group_size, per_split)};
}

// The first bytes[i] bytes of tensors[i] (all of it where bytes[i] < 0) as the kernels' L2 prefetch ranges
// (w4a16_prefetch.h): at most QK_PREFETCH_RANGES contiguous tensors on one GPU, every address and byte count a
// multiple of 16; stream_evict_first: the requesting decode kernel's own weights read evict-first.
QkPrefetchRanges prefetch_ranges(const std::vector<torch::Tensor>& tensors, const std::vector<int64_t>& bytes,
                                 bool stream_evict_first = false) {
  TORCH_CHECK(tensors.size() == bytes.size() && tensors.size() <= QK_PREFETCH_RANGES, "L2 prefetch takes up to ",
              QK_PREFETCH_RANGES, " tensors and as many byte counts, got ", tensors.size(), " and ", bytes.size());
  QkPrefetchRanges r = {};
  for (size_t i = 0; i < tensors.size(); ++i) {
    const torch::Tensor& t = tensors[i];
    TORCH_CHECK(t.is_cuda() && t.device() == tensors[0].device(), "tensor ", i,
                " to prefetch must be on the GPU of the first, got ", t.device());
    TORCH_CHECK(t.is_contiguous(), "tensor ", i, " to prefetch must be contiguous");
    const int64_t total = t.numel() * t.element_size();
    const int64_t n = bytes[i] < 0 || bytes[i] > total ? total : bytes[i];
    TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && n % 16 == 0, "tensor ", i,
                ": prefetch needs a 16-byte aligned address and a multiple of 16 bytes, got ", n, " bytes at ",
                t.data_ptr());
    r.p[r.n] = static_cast<const char*>(t.data_ptr());
    r.bytes[r.n++] = (uint64_t)n;
  }
  r.stream_evict_first = stream_evict_first ? 1 : 0;
  return r;
}

// The decode kernel's residual add and RMSNorm (QkResidualNorm) from mma_gemm's optional operands, checked: rms
// [M, K] (with or without glu), residual [M, N] (not glu), next_w [N] and g [M, N] (both or neither, with residual),
// all of x's dtype, contiguous; the streaming kernel only.
QkResidualNorm residual_norm(const torch::Tensor& x, const c10::optional<torch::Tensor>& rms, double eps,
                             const c10::optional<torch::Tensor>& residual, const c10::optional<torch::Tensor>& next_w,
                             c10::optional<torch::Tensor> g, int64_t M, int64_t N, int64_t K, bool staged, bool glu) {
  QkResidualNorm rn;
  TORCH_CHECK(!(staged && (rms || residual)), "the residual add and RMSNorm are the streaming kernel's, not staged");
  if (rms) {
    check_tensor(*rms, "rms", x.scalar_type(), 2);
    TORCH_CHECK(rms->size(0) == M && rms->size(1) == K, "rms must be [", M, ", ", K, "], got ", rms->sizes());
    TORCH_CHECK(reinterpret_cast<uintptr_t>(rms->data_ptr()) % 16 == 0, "rms must be 16-byte aligned");
    TORCH_CHECK(eps >= 0, "eps must be >= 0, got ", eps);
    rn.rms = u16(*rms);
    rn.eps = (float)eps;
  }
  TORCH_CHECK(!next_w == !g, "next_w and g come together");
  TORCH_CHECK(residual || !next_w, "next_w and g need residual");
  if (residual) {
    TORCH_CHECK(!glu, "residual is not for a gated pair (glu)");
    check_tensor(*residual, "residual", x.scalar_type(), 2);
    TORCH_CHECK(residual->size(0) == M && residual->size(1) == N, "residual must be [", M, ", ", N, "], got ",
                residual->sizes());
    rn.residual = u16(*residual);
  }
  if (next_w) {
    check_tensor(*next_w, "next_w", x.scalar_type(), 1);
    TORCH_CHECK(next_w->size(0) == N, "next_w must have ", N, " elements, got ", next_w->size(0));
    check_tensor(*g, "g", x.scalar_type(), 2);
    TORCH_CHECK(g->size(0) == M && g->size(1) == N, "g must be [", M, ", ", N, "], got ", g->sizes());
    rn.next_w = u16(*next_w);
    rn.g = u16_mut(*g);
  }
  return rn;
}

// The stream's sums of squares between two folded kernels (QkSumSq) from mma_gemm's ss, checked: fp32, contiguous;
// with rn.residual (and not rn.rms) [M, N / 16], written, with rn.rms (and not rn.residual) [M, K / 16], read.
QkSumSq sum_squares(const c10::optional<torch::Tensor>& ss, const QkResidualNorm& rn, int64_t M, int64_t N, int64_t K) {
  QkSumSq sq;
  if (!ss) return sq;
  const bool out = rn.residual != nullptr;
  TORCH_CHECK(out != (rn.rms != nullptr), "ss goes with residual (written) or with rms (read), not both or neither");
  check_tensor(*ss, "ss", torch::kFloat32, 2);
  const int64_t parts = (out ? N : K) / 16;
  TORCH_CHECK((out ? N : K) % 16 == 0 && ss->size(0) == M && ss->size(1) == parts, "ss must be [", M, ", ", parts,
              "] (", out ? "N" : "K", " / 16, a multiple of 16), got ", ss->sizes());
  if (out)
    sq.out = ss->data_ptr<float>();
  else
    sq.in = ss->data_ptr<float>();
  return sq;
}

}  // namespace

// The tensor-core kernels (w4a16_mma_cuda.h). mt: token tiles of 8 per block (1, 2, 4 or 8; staged: 8);
// staged: the shared-memory prefill kernel instead of the streaming one; splits: split-K; the streaming kernel's
// wk (its warps share one tile and split its chunks, mt <= 4) and pdl (a programmatic dependent launch, compute
// capability 9.0+, else ignored); cluster: the streaming kernel's splits of a tile as one thread-block cluster
// (sm_90+, = the number of splits, at most 16; 0 or 1: not); prefetch / prefetch_bytes: what the streaming kernel's
// blocks request into the L2 as they finish (prefetch_ranges; with wk only; none: empty); prefetch_evict_first: with
// them, the kernel's own weights read evict-first; glu: the layer is a gated pair (packing.glu_order), out [M, N / 2]
// gets silu(gate) * up (the streaming kernel with wk, no prefetch); rms / eps / residual / next_w / g / ss: the
// residual add and RMSNorm the streaming kernel folds in (residual_norm, QkResidualNorm; none: not).
void mma_gemm(torch::Tensor x, torch::Tensor w, torch::Tensor meta, c10::optional<torch::Tensor> bias,
              torch::Tensor out, torch::Tensor ws, torch::Tensor counters, int64_t group_size, bool sym, int64_t mt,
              int64_t splits, bool staged, bool pdl, bool wk, int64_t cluster, std::vector<torch::Tensor> prefetch,
              std::vector<int64_t> prefetch_bytes, bool prefetch_evict_first, bool glu,
              c10::optional<torch::Tensor> rms, double eps, c10::optional<torch::Tensor> residual,
              c10::optional<torch::Tensor> next_w, c10::optional<torch::Tensor> g, int64_t wk_warps,
              c10::optional<torch::Tensor> ss) {
  const bool bf = is_bf16(x);
  const auto [M, K, N] = check_mma_operands(x, w, meta, out, ws, counters, group_size, sym, glu);
  check_bias(bias, x, N);
  TORCH_CHECK(staged ? mt == 8 : (mt == 1 || mt == 2 || mt == 4 || mt == 8),
              "mt must be 1, 2, 4 or 8 (staged: 8), got ", mt);
  TORCH_CHECK(!wk || (!staged && mt <= 4), "wk (warps sharing a tile) is the streaming kernel's, with mt <= 4; got mt ",
              mt, staged ? ", staged" : "");
  const int64_t chunks = K / 64, per_split = split_chunks(K, splits);
  const int64_t n_per_block = staged ? 16 * QK_STAGED_WARPS * QK_STAGED_NT : 16 * (wk ? 1 : QK_STREAM_WARPS);
  const dim3 grid((M + 8 * mt - 1) / (8 * mt), (N + n_per_block - 1) / n_per_block, (chunks + per_split - 1) / per_split);
  TORCH_CHECK(cluster <= 1 || (!staged && sm90_or_later(x)), "cluster needs the streaming kernel on compute capability 9.0+");
  check_split_workspace(grid, cluster, M, N, ws, counters);
  TORCH_CHECK(prefetch.empty() || wk, "the L2 prefetch at the end of the kernel needs the streaming kernel with wk");
  TORCH_CHECK(!glu || (wk && prefetch.empty()),
              "glu (a gated pair's epilogue) needs the streaming kernel with wk and no L2 prefetch");
  const QkPrefetchRanges pf = prefetch_ranges(prefetch, prefetch_bytes, prefetch_evict_first);
  const QkResidualNorm rn = residual_norm(x, rms, eps, residual, next_w, g, M, N, K, staged, glu);
  const QkSumSq sq = sum_squares(ss, rn, M, N, K);
  TORCH_CHECK(sq.out == nullptr || (wk && cluster <= 1), "ss (the stream's sums of squares) is written with wk, "
              "unsplit or through the workspace, not through a cluster");
  TORCH_CHECK(wk_warps == QK_STREAM_WARPS || (wk_warps == 8 && wk && mt == 1 && prefetch.empty()),
              "wk_warps must be ", QK_STREAM_WARPS, ", or 8 with wk at mt 1 without the L2 prefetch; got ", wk_warps);
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const QkMmaArgs args = mma_args(x, w, meta, bias, out, ws, counters, M, N, K, group_size, per_split);
  check_launch("tensor-core W4A16 kernel",
               staged ? qk_launch_staged(args, bf, sym, grid, stream)
                      : qk_launch_stream(args, bf, sym, (int)mt, wk, pdl && sm90_or_later(x), (int)cluster, grid, pf,
                                         glu, rn, sq, (int)wk_warps, stream));
}

// A decode step's fused q/k/v projection with its rotary embedding and cache write in the decode kernel's epilogue
// (QkRope, w4a16_rope.h): x [M, K] (M <= 8, token t the step's token of sequence t), the layer [q; k; v] with its q
// and k rows in packing.rope_order; q [M, heads * head_dim] receives the rotated q, key_cache and value_cache
// [M, kv, len, head_dim] (the same strides, rows contiguous) the rotated k and the v at position (int64, one element);
// cos and sin [M or 1, head_dim] rows (contiguous). The kernel's blocks of wk_warps warps (4 or 8) share a tile,
// unsplit; pdl: a programmatic dependent launch (compute capability 9.0+, else ignored).
void mma_rope_gemm(torch::Tensor x, torch::Tensor w, torch::Tensor meta, c10::optional<torch::Tensor> bias,
                   torch::Tensor q, int64_t group_size, bool sym, bool pdl, int64_t wk_warps, torch::Tensor cos,
                   torch::Tensor sin, torch::Tensor position, torch::Tensor key_cache, torch::Tensor value_cache,
                   int64_t heads) {
  const bool bf = is_bf16(x);
  torch::Tensor ws = torch::empty({0}, x.options().dtype(torch::kFloat32));
  torch::Tensor counters = torch::empty({0}, x.options().dtype(torch::kInt32));
  TORCH_CHECK(key_cache.dim() == 4 && value_cache.sizes() == key_cache.sizes() &&
                  value_cache.strides() == key_cache.strides() && key_cache.stride(3) == 1,
              "key_cache and value_cache must be [B, kv, len, head_dim] alike, rows contiguous; got ",
              key_cache.sizes(), " and ", value_cache.sizes());
  const int64_t kv = key_cache.size(1), D = key_cache.size(3), M = x.size(0);
  TORCH_CHECK(heads > 0 && D % 16 == 0 && D > 0, "head_dim must be a multiple of 16, got ", D);
  const std::array<int64_t, 3> mkn = check_mma_operands(x, w, meta, q, ws, counters, group_size, sym, false, heads * D);
  const int64_t K = mkn[1], N = mkn[2];
  check_bias(bias, x, N);
  TORCH_CHECK(N == (heads + 2 * kv) * D, "the layer has ", N, " rows, not (heads + 2 kv) head_dim = ",
              (heads + 2 * kv) * D);
  TORCH_CHECK(M >= 1 && M <= 8 && key_cache.size(0) == M, "x must have one row a sequence of the caches (",
              key_cache.size(0), ") and 1 to 8 rows, got ", M);
  for (const torch::Tensor* t : {&key_cache, &value_cache})
    TORCH_CHECK(t->is_cuda() && t->device() == x.device() && t->scalar_type() == x.scalar_type(),
                "the caches must be on x's GPU in x's dtype");
  for (const torch::Tensor* t : {&cos, &sin}) {
    TORCH_CHECK(t->is_cuda() && t->device() == x.device() && t->scalar_type() == x.scalar_type() &&
                    t->is_contiguous() && (t->numel() == D || t->numel() == M * D),
                "cos and sin must be contiguous [", M, " or 1, ", D, "] in x's dtype on its GPU, got ", t->sizes());
  }
  TORCH_CHECK(cos.numel() == sin.numel(), "cos and sin must have the same rows");
  TORCH_CHECK(position.is_cuda() && position.device() == x.device() && position.scalar_type() == torch::kInt64 &&
                  position.numel() == 1,
              "position must be one int64 on x's GPU, got ", position.sizes(), " ", position.scalar_type());
  TORCH_CHECK(wk_warps == QK_STREAM_WARPS || wk_warps == 8, "wk_warps must be ", QK_STREAM_WARPS, " or 8, got ",
              wk_warps);
  QkRope r;
  r.cos = u16(cos), r.sin = u16(sin), r.pos = position.data_ptr<int64_t>();
  r.k_cache = u16_mut(key_cache), r.v_cache = u16_mut(value_cache);
  r.cs_row = cos.numel() == D ? 0 : D;
  r.cb = key_cache.stride(0), r.ch = key_cache.stride(1), r.cs = key_cache.stride(2);
  r.heads = (int)heads, r.head_dim = (int)D, r.rot_tiles = (int)((heads + kv) * D / 16), r.len = (int)key_cache.size(2);
  const c10::cuda::CUDAGuard guard(x.device());
  const QkMmaArgs args = mma_args(x, w, meta, bias, q, ws, counters, M, N, K, group_size, K / 64);
  check_launch("tensor-core W4A16 kernel with the rotary epilogue",
               qk_launch_stream_rope(args, bf, sym, pdl && sm90_or_later(x), (int)wk_warps, r,
                                     c10::cuda::getCurrentCUDAStream()));
}

// The decode kernel's trace records (w4a16_trace.h) as int64 [n, 6] on the CPU (weights' address, block and
// multiprocessor << 32, four times in ns), the buffer emptied; only in a build with QK_STREAM_TRACE=1.
torch::Tensor stream_trace() {
  std::vector<QkTraceRecord> records(QK_TRACE_RECORDS);
  const int n = qk_stream_trace_read(records.data(), QK_TRACE_RECORDS);
  TORCH_CHECK(n != -1, "this build has no trace: build with QUANTKIT_KERNEL_DEFINES=QK_STREAM_TRACE=1");
  TORCH_CHECK(n >= 0, "reading the decode kernel's trace failed: ", cudaGetErrorString(cudaGetLastError()));
  torch::Tensor out = torch::empty({n, 6}, torch::kInt64);
  std::memcpy(out.data_ptr(), records.data(), sizeof(QkTraceRecord) * n);
  return out;
}

// A decode step's gated MLP in one launch (qk_mma_mlp, M <= 8): out = down(silu(gate(x)) * up(x)), with the gated
// pair w1 / meta1 in packing.glu_order ([N1, K1]) and down w2 / meta2 ([N2, N1 / 2]), both without bias, of one
// symmetry; mid [M, N1 / 2] receives the pair's outputs; splits: down's split-K (through ws and counters, a counter
// a tile of 16 outputs); sync: splits + 1 zeroed ints, left zero; pdl: a programmatic dependent launch (sm_90+).
void mlp_gemm(torch::Tensor x, torch::Tensor w1, torch::Tensor meta1, torch::Tensor w2, torch::Tensor meta2,
              torch::Tensor mid, torch::Tensor out, torch::Tensor ws, torch::Tensor counters, torch::Tensor sync,
              int64_t group1, int64_t group2, bool sym, int64_t splits, bool pdl) {
  const bool bf = is_bf16(x);
  const auto [M, K1, N1] = check_mma_operands(x, w1, meta1, mid, ws, counters, group1, sym, /*glu=*/true);
  [[maybe_unused]] const auto [M2, K2, N2] = check_mma_operands(mid, w2, meta2, out, ws, counters, group2, sym);
  TORCH_CHECK(M >= 1 && M <= 8, "the fused MLP kernel takes 1 to 8 rows, got ", M);
  TORCH_CHECK(K2 * 2 == N1, "down must take the gated pair's ", N1 / 2, " outputs, takes ", K2);
  const int64_t per_split = split_chunks(K2, splits), nz = (K2 / 64 + per_split - 1) / per_split;
  if (nz > 1) {
    TORCH_CHECK(ws.numel() >= nz * M * N2, "workspace must hold splits*M*N = ", nz * M * N2, " floats, has ", ws.numel());
    TORCH_CHECK(counters.numel() >= N2 / 16, "counters must hold ", N2 / 16, ", has ", counters.numel());
  }
  check_tensor(sync, "sync", torch::kInt32, 1);
  TORCH_CHECK(sync.numel() >= nz + 1, "sync must hold splits + 1 = ", nz + 1, " ints, has ", sync.numel());
  const c10::cuda::CUDAGuard guard(x.device());
  const QkMlpArgs args{u16(x), reinterpret_cast<const uint4*>(w1.data_ptr()), reinterpret_cast<const uint4*>(w2.data_ptr()),
                       u16(meta1), u16(meta2), u16_mut(mid), u16_mut(out), ws.data_ptr<float>(),
                       counters.data_ptr<int>(), sync.data_ptr<int>(), (int)M, (int)N1, (int)K1, (int)N2, (int)group1,
                       (int)group2, (int)per_split};
  check_launch("fused MLP W4A16 kernel",
               qk_launch_mlp(args, bf, sym, pdl && sm90_or_later(x), c10::cuda::getCurrentCUDAStream()));
}

// The Hopper wgmma kernel (w4a16_wgmma_cuda.h): x in wgmma k order, bt tokens per block (64, 128 or 256); dense:
// the two-blocks-per-multiprocessor instance (fewer chunks per step, registers capped) for bt 64 and 128; wsm: the
// weights and scales through the shared-memory stages with x; cluster: as mma_gemm's.
void wgmma_gemm(torch::Tensor x, torch::Tensor w, torch::Tensor meta, c10::optional<torch::Tensor> bias,
                torch::Tensor out, torch::Tensor ws, torch::Tensor counters, int64_t group_size, bool sym, int64_t bt,
                int64_t splits, bool dense, bool wsm, int64_t cluster) {
  const bool bf = is_bf16(x);
  const auto [grid, args] =
      wgmma_launch(x, w, meta, bias, out, ws, counters, group_size, sym, bt, splits, cluster, /*ws_kernel=*/false);
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch("wgmma W4A16 kernel", qk_launch_wgmma(args, bf, sym, (int)bt, dense, wsm, (int)cluster, grid,
                                                     c10::cuda::getCurrentCUDAStream()));
}

// The depth of the split-K workspace (partial sums per tile) that the warp-specialized kernel's stream-K needs at this
// shape and bt, over ctas persistent blocks with what is left after whole waves cut among the first sk_blocks
// (QkWsWalk::max_splits), or 0 where some block's run would be empty (or the walk's 32-bit arithmetic overflow).
int64_t wgmma_ws_stream_k_depth(int64_t M, int64_t N, int64_t K, int64_t bt, int64_t ctas, int64_t sk_blocks) {
  check_wgmma_bt(bt, /*ws_kernel=*/true);
  TORCH_CHECK(0 < sk_blocks && sk_blocks <= ctas && M > 0 && N > 0 && K >= 64,
              "stream-K needs 0 < sk_blocks <= ctas, M, N > 0 and K >= 64, got ", sk_blocks, ", ", ctas, ", ", M, ", ",
              N, ", ", K);
  const QkWsWalk walk((int)ctas, (int)sk_blocks, (int)M, (int)N, (int)K, (int)bt, qk_ws_ks((int)bt));
  return walk.valid() ? walk.max_splits() : 0;
}

// The warp-specialized Hopper kernel (w4a16_wgmma_ws_cuda.h): xp is x packed by wgmma_pack_x (x's shape, its
// contents [K / 64][M][64]); bt tokens per block (16, 32, 64, 128 or 256); cluster: as
// mma_gemm's; multicast 2: pairs of blocks along N share each x tile (no split-K, an even number of 128-row blocks),
// else 1; sk_blocks > 0: stream-K over sk_ctas persistent blocks instead of the grid of splits (splits 1, no cluster
// or multicast; the workspace wgmma_ws_stream_k_depth x tiles x bt x 128 floats where that is above 1, a counter a
// tile); pdl: as a programmatic dependent launch of the wgmma_pack_x call just before it on the stream (which made xp);
// probe 1 to 4: a diagnostic that leaves out the MMAs and more (QkWsMaps::probe; out is not the product), else 0;
// pipelined: at 32 tokens, the instance whose consumers dequantize the next step while this one's MMAs run; glu: the
// layer is a gated pair (packing.glu_order) and out [M, N / 2] gets silu(gate) * up (no cluster, probe or pipelining).
void wgmma_ws_gemm(torch::Tensor xp, torch::Tensor w, torch::Tensor meta, c10::optional<torch::Tensor> bias,
                   torch::Tensor out, torch::Tensor ws, torch::Tensor counters, int64_t group_size, bool sym,
                   int64_t bt, int64_t splits, int64_t cluster, int64_t multicast, int64_t sk_ctas,
                   int64_t sk_blocks, bool pdl, int64_t probe, bool pipelined, bool glu) {
  const bool bf = is_bf16(xp);
  TORCH_CHECK(!glu || (cluster <= 1 && probe == 0 && !pipelined),
              "glu (a gated pair's epilogue) takes no cluster, probe or pipelined instance; got cluster ", cluster,
              ", probe ", probe, pipelined ? ", pipelined" : "");
  TORCH_CHECK(0 <= probe && probe <= 4 && (probe == 0 || bt <= 32), "probe must be 0, or 1 to 4 at bt 16 or 32; got ",
              probe, " at bt ", bt);
  TORCH_CHECK(!pipelined || bt == 32, "the pipelined instance below 256 tokens has 32 tokens a block, got bt ", bt);
  TORCH_CHECK(sk_blocks <= 0 || (splits <= 1 && cluster <= 1 && multicast == 1),
              "stream-K takes no split-K, cluster or multicast; got splits ", splits, ", cluster ", cluster,
              ", multicast ", multicast);
  auto [grid, args] =
      wgmma_launch(xp, w, meta, bias, out, ws, counters, group_size, sym, bt, splits, cluster, /*ws_kernel=*/true, glu);
  TORCH_CHECK(multicast == 1 || (multicast == 2 && grid.z == 1 && grid.y % 2 == 0),
              "multicast must be 1, or 2 with no split-K and an even number of 128-row blocks; got ", multicast,
              " with ", grid.z, " splits and ", grid.y, " blocks");
  if (sk_blocks > 0) {
    const int64_t depth = wgmma_ws_stream_k_depth(args.M, args.N, args.K, bt, sk_ctas, sk_blocks);
    TORCH_CHECK(depth > 0, "stream-K over ", sk_blocks, " blocks leaves some without work at M ", args.M, ", N ",
                args.N, ", K ", args.K, ", bt ", bt);
    const int64_t part = (int64_t)grid.x * grid.y * bt * 128;  // every tile's part, whole (qk_ws_part_store)
    TORCH_CHECK(depth == 1 || ws.numel() >= depth * part, "workspace must hold ", depth, " x ", part,
                " floats (depth x tiles x bt x 128) for stream-K, has ", ws.numel());
    TORCH_CHECK(counters.numel() >= (int64_t)grid.x * grid.y, "counters must hold ", grid.x * grid.y, ", has ",
                counters.numel());
    grid = dim3((unsigned)sk_ctas, 1, 1);
  }
  const c10::cuda::CUDAGuard guard(xp.device());
  check_launch("warp-specialized wgmma W4A16 kernel",
               qk_launch_wgmma_ws(args, bf, sym, (int)bt, (int)cluster, (int)multicast, (int)sk_blocks, pdl, grid,
                                  c10::cuda::getCurrentCUDAStream(), (int)probe, pipelined, glu));
}

// x [M, K] into the warp-specialized kernel's layout (qk_wgmma_pack_x): out has x's shape and type and holds
// [K / 64][M][64], k in the order of index (int32; words: [K / 2] 32-bit words of x's row, else [K] k; the values are
// not checked: PackedLinear.wgmma_x_pack_index makes them), or with no index (no act-order) in the MMA's own k order,
// x then 16-byte aligned.
void wgmma_pack_x(torch::Tensor x, c10::optional<torch::Tensor> index, bool words, torch::Tensor out) {
  is_bf16(x);
  check_tensor(x, "x", x.scalar_type(), 2);
  check_tensor(out, "out", x.scalar_type(), 2);
  TORCH_CHECK(out.sizes() == x.sizes(), "out must be shaped like x ", x.sizes(), ", got ", out.sizes());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0, "out must be 16-byte aligned (fresh tensors are)");
  const int32_t* idx = nullptr;
  if (index) {
    check_tensor(*index, "index", torch::kInt32, 1);
    const int64_t want = words ? x.size(1) / 2 : x.size(1);
    TORCH_CHECK(x.size(1) % 64 == 0 && index->size(0) == want, "index must have ", want, " elements for K = ",
                x.size(1), " (a multiple of 64)", words ? " in words" : "", ", got ", index->size(0));
    TORCH_CHECK(!words || reinterpret_cast<uintptr_t>(x.data_ptr()) % 4 == 0,
                "x must be 4-byte aligned to be read in words; pass the index of k instead");
    TORCH_CHECK(reinterpret_cast<uintptr_t>(index->data_ptr()) % 16 == 0, "index must be 16-byte aligned");
    idx = index->data_ptr<int32_t>();
  } else {
    TORCH_CHECK(x.size(1) % 64 == 0, "K must be a multiple of 64, got ", x.size(1));
    TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0,
                "x must be 16-byte aligned to be packed without an index; pass the index instead");
  }
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch("wgmma x packing kernel",
               qk_launch_wgmma_pack_x(u16(x), idx, words, reinterpret_cast<uint4*>(out.data_ptr()), (int)x.size(0),
                                      (int)x.size(1), c10::cuda::getCurrentCUDAStream()));
}

// The [N, K] weight in the activation type, for the dequantize-then-GEMM path.
void mma_dequant(torch::Tensor w, torch::Tensor meta, torch::Tensor out, int64_t group_size, bool sym) {
  const bool bf = is_bf16(out);
  check_tensor(w, "packed weight", torch::kInt32, 4);
  check_tensor(meta, "packed scales", out.scalar_type(), 4);
  check_tensor(out, "out", out.scalar_type(), 2);
  const int64_t N = w.size(0) * 16, K = w.size(1) * 64;
  TORCH_CHECK(out.size(0) == N && out.size(1) == K, "out must be [", N, ", ", K, "], got ", out.sizes());
  const c10::cuda::CUDAGuard guard(w.device());
  check_launch("W4A16 dequantize kernel",
               qk_launch_dequant(reinterpret_cast<const uint4*>(w.data_ptr()), u16(meta), u16_mut(out), (int)N, (int)K,
                                 (int)group_size, bf, sym, c10::cuda::getCurrentCUDAStream()));
}

// Warm the L2 cache with the first bytes[i] bytes of tensors[i] (all of it where bytes[i] < 0), in one launch: the
// requests are issued on the current stream and complete after the call; nothing is written.
void l2_prefetch(std::vector<torch::Tensor> tensors, std::vector<int64_t> bytes) {
  TORCH_CHECK(!tensors.empty(), "l2_prefetch needs at least one tensor");
  const QkPrefetchRanges r = prefetch_ranges(tensors, bytes);
  const c10::cuda::CUDAGuard guard(tensors[0].device());
  check_launch("L2 prefetch kernel", qk_launch_l2_prefetch(r, c10::cuda::getCurrentCUDAStream()));
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "quantkit W4A16 kernels (csrc/)";
  m.def("dot2_gemm", &dot2_gemm, "dot2 decode kernel (formats.md §2), M <= 8");
  m.def("wmma_gemm", &wmma_gemm, "RDNA3 WMMA prefill kernel (formats.md §2; a stand-in for WMMA on CUDA)");
#if QK_IS_CUDA
  m.def("mma_gemm", &mma_gemm, "tensor-core W4A16 GEMM over the mma layout");
  m.def("mma_rope_gemm", &mma_rope_gemm, "a decode step's q/k/v projection with its rotary embedding and cache write");
  m.def("mma_dequant", &mma_dequant, "mma layout -> [N, K] weight");
  m.def("stream_trace", &stream_trace, "the decode kernel's trace records (QK_STREAM_TRACE builds)");
  m.def("mlp_gemm", &mlp_gemm, "a decode step's gated MLP (M <= 8) in one launch of the decode kernel");
  m.def("wgmma_gemm", &wgmma_gemm, "Hopper wgmma W4A16 GEMM over the mma layout, x in wgmma k order");
  m.def("wgmma_ws_gemm", &wgmma_ws_gemm, "warp-specialized Hopper wgmma W4A16 GEMM, x packed by wgmma_pack_x");
  m.def("wgmma_pack_x", &wgmma_pack_x, "x in the warp-specialized wgmma kernel's layout");
  m.def("l2_prefetch", &l2_prefetch, "request the first bytes of a tensor into the L2 cache (nothing written)");
  m.def("wgmma_ws_stream_k_depth", &wgmma_ws_stream_k_depth, "split-K workspace depth of the ws kernel's stream-K");
#endif
}
