// w4a16_mma_cuda.h — the NVIDIA path: tensor-core mma.sync.m16n8k16, weights streamed straight from global
// memory into registers in a layout repacked for the MMA fragments. CUDA only.
//
// The product is computed transposed, out^T = W x^T: the weight is the 16x16 A operand (rows = outputs n) and
// the activations the 16x8 B operand (columns = tokens), so one MMA serves 8 tokens and M = 1 wastes 7/8 of a
// tensor-core op instead of 15/16, and a thread's 16-byte load is exactly its A fragments for 64 k.
//
// "mma" layout (built by quantkit.kernels.packing.repack_mma):
//   w     int32 [N/16, K/64, 32, 4]: tile t (rows 16t..16t+15), chunk c (k 64c..64c+63), lane l, word j (k16 step).
//         Lane l = 4*gid + tig. Register i (0..3) of step j holds rows 16t + gid + 8*(i&1) at
//         k = 64c + 16*tig + 4*j + 2*(i>>1) + {0, 1}: the first in bits 4i..4i+3, the second in bits 16+4i.
//         The MMA's 16 k slots are a permutation of physical k; x's B fragments use the same permutation, so a
//         thread's activations for a whole chunk are 16 consecutive k (two 16-byte loads), and all of a thread's
//         weights in a chunk lie in one group (G a multiple of 16).
//   meta  T [N/16, G, 8, 2] (SYM): the scales of rows (16t + r, 16t + r + 8) of group g;
//         T [N/16, G, 8, 4] (asym): those scales, then (magic + zero) of the same two rows.
//   Dequantization (v - (magic + zero)) * scale in 16-bit arithmetic: bit-identical to the reference's weights.
// Two kernels over it:
//   qk_mma_stream (decode, and small N): one warp = one 16-row tile, no shared memory and no barriers (or the
//     block's 4 warps = one tile, each taking every 4th batch of chunks, their sums added through shared memory
//     after one barrier); x fragments straight from global (L1-resident), U chunks of weights in flight per warp;
//     many small blocks + split-K.
//   qk_mma_staged (prefill on wide N): 8 warps x 2 tiles share x staged in shared memory per block, the next
//     stage's weights and x loaded while this one computes.
// Split-K (gridDim.z > 1): each split writes fp32 partial sums to ws [z, M, N]; the last block of each (x, y)
// tile, counted in counters[] (zero on entry, left zero on exit), sums them in a fixed order and writes out. On
// Hopper, when the launch makes the splits of a tile one thread-block cluster (cluster dims (1, 1, gridDim.z)),
// they add their sums through distributed shared memory instead (qk_cluster_reduce): no workspace, no counters,
// no global round trips, and the same additions in the same order, so the same bits.
#pragma once

#include "w4a16_common.h"
#include "w4a16_prefetch.h"
#include "w4a16_residual_norm.h"
#include "w4a16_rope.h"
#include "w4a16_trace.h"

#if QK_IS_CUDA
#include <cooperative_groups.h>

template <typename Tag>
struct QkMma;
template <>
struct QkMma<QkF16> {
  static QK_INLINE uint32_t dequant(uint32_t v, uint32_t zc2, uint32_t s2) {
    __half2 r = __hmul2(__hsub2(*reinterpret_cast<__half2*>(&v), *reinterpret_cast<__half2*>(&zc2)),
                        *reinterpret_cast<__half2*>(&s2));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  static QK_INLINE void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <>
struct QkMma<QkBF16> {
  static QK_INLINE uint32_t dequant(uint32_t v, uint32_t zc2, uint32_t s2) {
    __nv_bfloat162 r = __hmul2(__hsub2(*reinterpret_cast<__nv_bfloat162*>(&v),
                                       *reinterpret_cast<__nv_bfloat162*>(&zc2)),
                               *reinterpret_cast<__nv_bfloat162*>(&s2));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  static QK_INLINE void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// Streamed once: skip L1, keep L2's default policy (blocks of other token tiles read the same weights).
QK_INLINE uint4 qk_ld_stream(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}
// The same with an L2 cache policy (qk_stream_policy).
QK_INLINE uint4 qk_ld_stream(const uint4* p, uint64_t policy) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p), "l"(policy));
  return r;
}

// Asynchronous global -> shared copies (cp.async, sm_80+), in commit groups.
QK_INLINE uint32_t qk_smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
// 16 bytes, bypassing L1 (.cg), zero-filled when !valid (rows past M).
QK_INLINE void qk_cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
// 4 or 8 bytes through L1 (.ca: the only kind for these sizes), zero-filled when !valid.
template <int BYTES>
QK_INLINE void qk_cp_async_small(uint32_t dst, const void* src, bool valid) {
  static_assert(BYTES == 4 || BYTES == 8, "cp.async.ca copies 4, 8 or 16 bytes");
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(src), "n"(BYTES), "r"(valid ? BYTES : 0));
}
QK_INLINE void qk_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Wait until at most N of this thread's groups are pending; a compiler barrier for shared-memory reads after it.
template <int N>
QK_INLINE void qk_cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Hopper and later (sm_90+): the device code of the programmatic-launch hooks below; 0 on older parts.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define QK_SM90 1
#else
#define QK_SM90 0
#endif

// Programmatic dependent launch (sm_90+; no-ops on older parts and when the launch did not ask for it).
// qk_pdl_trigger lets the next kernel of the stream, if launched with the programmatic attribute, start its
// prologue once every block of this one has triggered; qk_pdl_wait blocks until the kernel before this one has
// finished and its writes are visible. A kernel launched with the attribute must not touch anything an earlier
// kernel writes (x, out, the split-K workspace and counters) before qk_pdl_wait; the packed weights and scales
// are constant, so their first loads go out before it, over the previous kernel's tail. A kernel triggers only after
// its own wait, so that a programmatic launch after it starts once every kernel before it has finished: the next
// kernel may read an older kernel's output without waiting for anything but its predecessor (inductor's kernels
// with their programmatic launches do; quantkit.eval.fuse.INDUCTOR_PDL).
QK_INLINE void qk_pdl_trigger() {
#if QK_SM90
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
QK_INLINE void qk_pdl_wait() {
#if QK_SM90
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
// Wait for the kernel before, then let the next one launch: the order every kernel here keeps (see above).
QK_INLINE void qk_pdl_wait_then_trigger() {
  qk_pdl_wait();
  qk_pdl_trigger();
}

// The group of a lane's weights in chunk c, (64c + 16 tig) / group_size, without a division in the loop: the
// group size is a multiple of 16, so it is n / d with n = 4c + tig and d = group_size / 16, which is the high word
// of n * ceil(2^32 / d). With n = qd + r and e = d ceil(2^32 / d) - 2^32 < d, that high word is
// q + floor((r + ne / 2^32) / d): exact while n (d - 1) < 2^32, which K < 2^20 guarantees. d >= 2 (group size
// >= 32) keeps ceil(2^32 / d) in 32 bits. The host checks both.
struct QkGroupOf {
  uint32_t mul, tig;
  QK_INLINE QkGroupOf(int group_size, int lane_tig)
      : mul(0xffffffffu / (uint32_t)(group_size / 16) + 1u), tig((uint32_t)lane_tig) {}
  QK_INLINE int operator()(int c) const { return (int)__umulhi(4u * (uint32_t)c + tig, mul); }
};

// Scales (and magic + zero) of this thread's two rows in its group: loaded raw (x: the two scales, y: the two
// magic + zero when asymmetric), then splatted into 16-bit pairs.
template <bool SYM>
QK_INLINE uint2 qk_mma_meta_load(const uint16_t* meta, size_t idx) {
  if (SYM) return make_uint2(__ldg(reinterpret_cast<const uint32_t*>(meta) + idx), 0u);
  return __ldg(reinterpret_cast<const uint2*>(meta) + idx);
}
// The low / high 16 bits of v in both halves: one byte permute each.
QK_INLINE uint32_t qk_splat_lo(uint32_t v) { return __byte_perm(v, 0u, 0x1010u); }
QK_INLINE uint32_t qk_splat_hi(uint32_t v) { return __byte_perm(v, 0u, 0x3232u); }
template <typename Tag, bool SYM>
QK_INLINE void qk_mma_meta_unpack(uint2 m, uint32_t& s_lo, uint32_t& s_hi, uint32_t& z_lo, uint32_t& z_hi) {
  s_lo = qk_splat_lo(m.x), s_hi = qk_splat_hi(m.x);
  if (SYM) {
    z_lo = z_hi = qk_splat(qk_float_to_bits(QkMagic<Tag>::bias + 8.f, Tag()));
  } else {
    z_lo = qk_splat_lo(m.y), z_hi = qk_splat_hi(m.y);
  }
}
template <typename Tag, bool SYM>
QK_INLINE void qk_mma_meta(const uint16_t* meta, size_t idx, uint32_t& s_lo, uint32_t& s_hi, uint32_t& z_lo,
                           uint32_t& z_hi) {
  qk_mma_meta_unpack<Tag, SYM>(qk_mma_meta_load<SYM>(meta, idx), s_lo, s_hi, z_lo, z_hi);
}

// One 64-k chunk of one 16-row tile against MT token tiles: 4 steps x MT MMAs. xb[t][0..7] are the chunk's
// B-fragment words of token tile t (x[8t + gid][64c + 16 tig .. +16]).
template <typename Tag, int MT>
QK_INLINE void qk_mma_chunk(float (&acc)[MT][4], const uint4 wv, const uint32_t (&xb)[MT][8], uint32_t s_lo,
                            uint32_t s_hi, uint32_t z_lo, uint32_t z_hi) {
  const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    uint32_t a[4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
      a[i] = QkMma<Tag>::dequant(qk_magic_pair<Tag>(words[j], i), (i & 1) ? z_hi : z_lo, (i & 1) ? s_hi : s_lo);
#pragma unroll
    for (int t = 0; t < MT; ++t) QkMma<Tag>::mma(acc[t], a, xb[t][2 * j], xb[t][2 * j + 1]);
  }
}

// One output element v (fp32, bias added) at out[at], feature n: rounded once, or with rn.residual the residual
// add's two roundings (and rn.g's element). rn all null: the plain store (the compiler folds the rest away). Returns
// the element stored, as a float (qk_mma_store_out with SS).
template <typename Tag>
QK_INLINE float qk_store_y(uint16_t* __restrict__ out, size_t at, int n, float v, const QkResidualNorm& rn) {
  uint16_t y = qk_float_to_bits(v, Tag());
  if (rn.residual != nullptr) {
    y = qk_float_to_bits(qk_bits_to_float(rn.residual[at], Tag()) + qk_bits_to_float(y, Tag()), Tag());
    if (rn.next_w != nullptr)
      rn.g[at] = qk_float_to_bits(qk_bits_to_float(y, Tag()) * qk_bits_to_float(rn.next_w[n], Tag()), Tag());
  }
  out[at] = y;
  return qk_bits_to_float(y, Tag());
}

// The block's C fragments as one array in shared memory, for a cluster reduction: warp w's tile nt, token tile
// t, element e, lane l at red[((w NT + nt) MT 4 + 4t + e) 32 + l]; warps w < warps hold sums (with WK only warp 0),
// and warp w's tile nt is tile tile_base + w NT + nt. red: shared memory of warps x NT x MT x 512 bytes that nothing
// else uses during the epilogue.
struct QkClusterTile {
  float* red;
  int tile_base, warps;
};

// The fp32 sum of element idx of red over the cluster's blocks, in rank order (the same order as the workspace
// path's loop over z).
QK_INLINE float qk_cluster_sumf(const float* red, int idx, int blocks) {
#if QK_SM90
  namespace cg = cooperative_groups;
  float v = 0.f;
#pragma unroll 1
  for (int p = 0; p < blocks; ++p) v += cg::this_cluster().map_shared_rank(red, p)[idx];
  return v;
#else
  return 0.f;
#endif
}
// The same plus the bias, rounded once.
template <typename Tag>
QK_INLINE uint16_t qk_cluster_sum(const float* red, int idx, int blocks, float b) {
  return qk_float_to_bits(qk_cluster_sumf(red, idx, blocks) + b, Tag());
}

// A gated pair's output feature (GLU epilogues): silu(gate) * up in fp32, rounded once. The pair's layer has its rows
// in packing.glu_order: a 16-row tile's rows gid and gid + 8 are gate and up of output feature 8 tile + gid. The fast
// division (2 ulp; 0 where exp(-gate) passes 2^126, i.e. silu's -0 from gate < -87): an IEEE division's slow path
// is a call with a stack frame, which the spill check (tests/test_hip_isa.py) refuses.
template <typename Tag>
QK_INLINE uint16_t qk_glu_bits(float gate, float up) {
  return qk_float_to_bits(__fdividef(gate, 1.f + __expf(-gate)) * up, Tag());
}

// A decode step's rotary embedding and cache write in the decode kernel's epilogue (QkRope), one token tile (MT 1):
// the operands of a lane's two tokens (m0 + 2 tig + e) and its rotation pair (dims d and d + head_dim / 2 of the
// tile's head), loaded once the kernel before has finished; a v tile loads the position only.
template <typename Tag>
struct QkRopeLane {
  uint16_t c[2][2] = {}, s[2][2] = {};  // [token e][dim d, d + head_dim / 2]
  int64_t at = 0;
  QK_INLINE void load(const QkRope& r, int tile, int m0, int lane, int M) {
    at = __ldg(r.pos);
    if (tile >= r.rot_tiles) return;
    const int half = r.head_dim / 2, d = (tile % (r.head_dim / 16)) * 8 + lane / 4;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int tok = m0 + 2 * (lane % 4) + e;
      if (tok >= M) continue;
      const uint16_t *cr = r.cos + tok * r.cs_row + d, *sr = r.sin + tok * r.cs_row + d;
      c[e][0] = __ldg(cr), c[e][1] = __ldg(cr + half), s[e][0] = __ldg(sr), s[e][1] = __ldg(sr + half);
    }
  }
  // The tile's C fragment (acc[0..1]: row n = 16 tile + gid, acc[2..3]: row n + 8) plus the bias, rounded, rotated
  // where it is q or k, and stored: q into out [M, heads * head_dim], k and v into the caches at position at.
  QK_INLINE void store(const float (&acc)[4], const QkRope& r, int tile, int m0, int lane,
                       const uint16_t* __restrict__ bias, uint16_t* __restrict__ out, int M) const {
    const int gid = lane / 4, n_lo = tile * 16 + gid, D = r.head_dim, half = D / 2;
    const float b_lo = bias ? qk_bits_to_float(bias[n_lo], Tag()) : 0.f;
    const float b_hi = bias ? qk_bits_to_float(bias[n_lo + 8], Tag()) : 0.f;
    // a position outside the cache writes q only (torch's index_copy_ in ops.rope_rows stops such a step instead)
    if ((at < 0 || at >= r.len) && tile >= r.heads * (D / 16)) return;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int tok = m0 + 2 * (lane % 4) + e;
      if (tok >= M) continue;
      const uint16_t lo = qk_float_to_bits(acc[e] + b_lo, Tag()), hi = qk_float_to_bits(acc[e + 2] + b_hi, Tag());
      if (tile < r.rot_tiles) {
        const float xl = qk_bits_to_float(lo, Tag()), xh = qk_bits_to_float(hi, Tag());
        const float yl = xl * qk_bits_to_float(c[e][0], Tag()) - xh * qk_bits_to_float(s[e][0], Tag());
        const float yh = xh * qk_bits_to_float(c[e][1], Tag()) + xl * qk_bits_to_float(s[e][1], Tag());
        const int head = tile / (D / 16), d = (tile % (D / 16)) * 8 + gid;
        uint16_t* dst = head < r.heads ? out + (size_t)tok * r.heads * D + head * D + d
                                       : r.k_cache + tok * r.cb + (head - r.heads) * r.ch + at * r.cs + d;
        dst[0] = qk_float_to_bits(yl, Tag());
        dst[half] = qk_float_to_bits(yh, Tag());
      } else {  // v: rows in order, dims dv and dv + 8 of one head
        const int row = n_lo - r.rot_tiles * 16, dv = row % D;
        uint16_t* dst = r.v_cache + tok * r.cb + (row / D) * r.ch + at * r.cs + dv;
        dst[0] = lo;
        dst[8] = hi;
      }
    }
  }
};

// Split-K inside a cluster (sm_90): every block stores its sums in its shared memory, then block r of the cluster
// adds the cluster's sums for elements r, r + S, ... (in units of the block's threads) and writes them out (GLU: the
// gate elements' threads add their up elements too, 64 floats on, and write the pair's one output of [M, N / 2]).
// Returns false (doing nothing) unless the launch made gridDim.z blocks one cluster.
template <typename Tag, int NT, int MT, bool GLU = false>
QK_INLINE bool qk_cluster_reduce(const float (&acc)[NT][MT][4], const QkClusterTile& ct, int n_tiles, int m0,
                                 int lane, const uint16_t* __restrict__ bias, uint16_t* __restrict__ out, int M,
                                 int N, const QkResidualNorm& rn = QkResidualNorm()) {
#if QK_SM90
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  const int blocks = (int)cluster.num_blocks();
  if (ct.red == nullptr || blocks != (int)gridDim.z) return false;
  const int warp = threadIdx.x / 32;
  __syncthreads();  // the kernel may reuse shared memory the other warps still read (the wgmma kernel's stages)
  if (warp < ct.warps)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) ct.red[((warp * NT + nt) * MT * 4 + 4 * t + e) * 32 + lane] = acc[nt][t][e];
  cluster.sync();
  const int elements = ct.warps * NT * MT * 4 * 32, threads = (int)blockDim.x;
  if constexpr (GLU) {  // over the gate elements (e 0, 1) only, each with its up element (e + 2: 64 floats on)
#pragma unroll 1
    for (int p = (int)cluster.block_rank() * threads + (int)threadIdx.x; p < elements / 2; p += blocks * threads) {
      const int l = p % 32, e = (p / 32) % 2, f = (p / 64) * 4 + e, idx = f * 32 + l;
      const int t = (f / 4) % MT, tile = ct.tile_base + f / (4 * MT), tok = m0 + 8 * t + 2 * (l % 4) + e;
      const int n = tile * 16 + l / 4;
      if (tile < n_tiles && tok < M) {
        const float gate = qk_cluster_sumf(ct.red, idx, blocks) + (bias ? qk_bits_to_float(bias[n], Tag()) : 0.f);
        const float up = qk_cluster_sumf(ct.red, idx + 64, blocks) + (bias ? qk_bits_to_float(bias[n + 8], Tag()) : 0.f);
        out[(size_t)tok * (N / 2) + tile * 8 + l / 4] = qk_glu_bits<Tag>(gate, up);
      }
    }
  } else {
#pragma unroll 1
    for (int idx = (int)cluster.block_rank() * threads + (int)threadIdx.x; idx < elements; idx += blocks * threads) {
      const int l = idx % 32, f = idx / 32, e = f % 4, t = (f / 4) % MT, tile = ct.tile_base + f / (4 * MT);
      const int n = tile * 16 + l / 4 + 8 * (e >> 1), tok = m0 + 8 * t + 2 * (l % 4) + (e & 1);
      if (tile < n_tiles && tok < M)
        if (rn.residual == nullptr)  // (the plain store written as before: the wgmma kernels' SASS unchanged)
          out[(size_t)tok * N + n] = qk_cluster_sum<Tag>(ct.red, idx, blocks, bias ? qk_bits_to_float(bias[n], Tag()) : 0.f);
        else
          qk_store_y<Tag>(out, (size_t)tok * N + n, n,
                          qk_cluster_sumf(ct.red, idx, blocks) + (bias ? qk_bits_to_float(bias[n], Tag()) : 0.f), rn);
    }
  }
  cluster.sync();  // no block leaves while another still reads its shared memory
  return true;
#else
  return false;
#endif
}

// A barrier over the block's first THREADS threads only (named barrier 1), for epilogues that some warps of the
// block do not join.
template <int THREADS>
QK_INLINE void qk_epilogue_sync() {
  asm volatile("bar.sync 1, %0;\n" ::"n"(THREADS) : "memory");
}

// The pieces of a persistent kernel's epilogue (qk_wgmma_ws's stream-K) over the C fragments of NT tiles x MT token
// tiles: acc[nt][t][0..1] is row n = 16*tile + gid, tokens m0 + 8t + 2*tig + {0,1}; acc[nt][t][2..3] row n + 8.
// Tiles from n_tiles on and tokens from M on are skipped. The grid's epilogue (qk_mma_epilogue, below) calls
// qk_mma_store_out too, and nvcc 13.0 gives the same SASS as with the loop written out there (docs/kernel.md, item
// 46); building that whole epilogue from these pieces had changed ptxas's schedule of the decode kernel that shares it
// (5-7% slower at M <= 8 with its warps sharing a tile, measured on the H200): compare the SASS when changing it.
// Whether this block is the last of a tile's nz parts to arrive on its counter (its partial sums, like every
// other's, in the workspace); the last sets the counter back to zero. The block's first SYNC threads call it.
template <int SYNC>
QK_INLINE bool qk_split_arrive(int* counter, int nz) {
  __threadfence();
  qk_epilogue_sync<SYNC>();
  __shared__ int last;
  if (threadIdx.x == 0) last = atomicAdd(counter, 1) == nz - 1;
  qk_epilogue_sync<SYNC>();
  if (!last) return false;  // (a later arrival sets last only after its first barrier: all have read it by then)
  __threadfence();
  if (threadIdx.x == 0) *counter = 0;
  return true;
}
// acc (+ bias), rounded once to 16 bits, into out [M, N]; GLU: silu(gate) * up of each row pair (rows n_lo and
// n_lo + 8, qk_glu_bits) into out [M, N / 2]. SS (not GLU): also each token's sum of squares of the tile's outputs
// into ss_out [M, N / 16] where it is set (QkSumSq::out; the code of the other instances as without it).
template <typename Tag, int NT, int MT, bool GLU = false, bool SS = false>
QK_INLINE void qk_mma_store_out(const float (&acc)[NT][MT][4], int tile0, int n_tiles, int m0, int lane,
                                const uint16_t* __restrict__ bias, uint16_t* __restrict__ out, int M, int N,
                                const QkResidualNorm& rn = QkResidualNorm(), float* __restrict__ ss_out = nullptr) {
  const int gid = lane / 4, tig = lane % 4;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    if (tile0 + nt >= n_tiles) break;
    const int n_lo = (tile0 + nt) * 16 + gid;
    const float b_lo = bias ? qk_bits_to_float(bias[n_lo], Tag()) : 0.f;
    const float b_hi = bias ? qk_bits_to_float(bias[n_lo + 8], Tag()) : 0.f;
    float sq[MT][2] = {};  // (SS) this lane's squares of the stored outputs, by token tile and token e & 1
#pragma unroll
    for (int t = 0; t < MT; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int tok = m0 + 8 * t + 2 * tig + (e & 1);
        if constexpr (GLU) {
          if (e < 2 && tok < M)
            out[(size_t)tok * (N / 2) + (tile0 + nt) * 8 + gid] =
                qk_glu_bits<Tag>(acc[nt][t][e] + b_lo, acc[nt][t][e + 2] + b_hi);
        } else if (tok < M) {
          const float y = qk_store_y<Tag>(out, (size_t)tok * N + n_lo + 8 * (e >> 1), n_lo + 8 * (e >> 1),
                                          acc[nt][t][e] + ((e >> 1) ? b_hi : b_lo), rn);
          if constexpr (SS) sq[t][e & 1] = fmaf(y, y, sq[t][e & 1]);
        }
      }
    if constexpr (SS && !GLU)
      if (ss_out != nullptr)  // each token's sum over the tile's 16 rows: the 8 lanes of its tig, then gid 0
#pragma unroll
        for (int t = 0; t < MT; ++t)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            float v = sq[t][h];
#pragma unroll
            for (int o = 4; o < 32; o *= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
            const int tok = m0 + 8 * t + 2 * tig + h;
            if (gid == 0 && tok < M) ss_out[(size_t)tok * (N / 16) + tile0 + nt] = v;
          }
  }
}

// Write (or, split-K, reduce then write) the C fragments of NT tiles x MT token tiles. Every thread of the block
// must call it (it holds barriers when gridDim.z > 1). acc[nt][t][0..1]: row n = 16*tile + gid, tokens
// m0 + 8t + 2*tig + {0,1}; acc[nt][t][2..3]: row n + 8. ct: the block's tile for a cluster reduction (red null:
// the kernel has none, the workspace path).
template <typename Tag, int NT, int MT, bool GLU = false, bool SS = false>
QK_INLINE void qk_mma_epilogue(float (&acc)[NT][MT][4], int tile0, int n_tiles, int m0, int lane,
                               const uint16_t* __restrict__ bias, uint16_t* __restrict__ out, float* __restrict__ ws,
                               int* __restrict__ counters, int M, int N, const QkClusterTile& ct = {nullptr, 0, 0},
                               const QkResidualNorm& rn = QkResidualNorm(), float* __restrict__ ss_out = nullptr) {
  const int gid = lane / 4, tig = lane % 4;
  qk_pdl_wait();  // (a no-op once waited) warps that had no tile come here without having waited
  if (gridDim.z > 1 && qk_cluster_reduce<Tag, NT, MT, GLU>(acc, ct, n_tiles, m0, lane, bias, out, M, N, rn)) return;
  if (gridDim.z > 1) {
    float* part = ws + (size_t)blockIdx.z * M * N;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      if (tile0 + nt >= n_tiles) break;
      const int n_lo = (tile0 + nt) * 16 + gid;
#pragma unroll
      for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int tok = m0 + 8 * t + 2 * tig + (e & 1);
          if (tok < M) __stcg(part + (size_t)tok * N + n_lo + 8 * (e >> 1), acc[nt][t][e]);
        }
    }
    __threadfence();
    __syncthreads();
    __shared__ int last;
    int* counter = counters + blockIdx.y * gridDim.x + blockIdx.x;
    if (threadIdx.x == 0) last = atomicAdd(counter, 1) == (int)gridDim.z - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (threadIdx.x == 0) *counter = 0;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      if (tile0 + nt >= n_tiles) break;
      const int n_lo = (tile0 + nt) * 16 + gid;
#pragma unroll
      for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int tok = m0 + 8 * t + 2 * tig + (e & 1);
          if (tok >= M) continue;
          float v = 0.f;
          for (int z = 0; z < (int)gridDim.z; ++z) v += __ldcg(ws + ((size_t)z * M + tok) * N + n_lo + 8 * (e >> 1));
          acc[nt][t][e] = v;
        }
    }
  }
  qk_mma_store_out<Tag, NT, MT, GLU, SS>(acc, tile0, n_tiles, m0, lane, bias, out, M, N, rn, ss_out);
}

// The activations of the decode kernels: a lane's B fragments of chunk cc for each of MT token tiles (its rows
// m0 + 8t + gid, k = 64cc + 16tig .. +16), straight from global memory (L1-resident), zero past M. WEAK: plain loads
// instead of the read-only path, for an x that another block of the same kernel wrote (qk_mma_mlp, after an acquire:
// the memory model orders those, not the non-coherent ones), still cached in the L1 for the blocks beside.
template <int MT, bool WEAK = false>
struct QkDecodeX {
  const uint4* row[MT];
  QK_INLINE QkDecodeX(const uint16_t* x, int m0, int gid, int tig, int M, int K) {
#pragma unroll
    for (int t = 0; t < MT; ++t) {
      const int tok = m0 + t * 8 + gid;
      row[t] = tok < M ? reinterpret_cast<const uint4*>(x + (size_t)tok * K + 16 * tig) : nullptr;
    }
  }
  QK_INLINE void load(int cc, uint32_t (&xb)[MT][8]) const {
#pragma unroll
    for (int t = 0; t < MT; ++t) {
      uint4 lo = make_uint4(0, 0, 0, 0), hi = lo;
      if (row[t]) {
        if constexpr (WEAK)
          lo = row[t][cc * 8], hi = row[t][cc * 8 + 1];
        else
          lo = __ldg(row[t] + cc * 8), hi = __ldg(row[t] + cc * 8 + 1);
      }
      xb[t][0] = lo.x, xb[t][1] = lo.y, xb[t][2] = lo.z, xb[t][3] = lo.w;
      xb[t][4] = hi.x, xb[t][5] = hi.y, xb[t][6] = hi.z, xb[t][7] = hi.w;
    }
  }
};

#define QK_STREAM_WARPS 4

// The decode kernel's RMSNorm scales (QkResidualNorm::rms) in two halves. qk_rms_partials: this warp's share of the
// sums of squares of the rows m0 .. m0 + T - 1 of h [M, K] (K a multiple of 8; the block's threads striding over each
// row, 8 elements a load; rows from M on: none) into part[warp][t]. Every warp calls it once, right after its wait for
// the kernel that wrote h, so that the rows' L2 round trip overlaps its first weights' DRAM latency instead of
// following the main loop (session 44's version read the rows after it, two block barriers a row: slower than the
// launches it removed, docs/kernel.md item 58). qk_rms_scale: rsqrt(mean(h^2) + eps) of row t from the warps' parts
// in warp order, after a block barrier that follows every warp's call (rows from M on: 1).
template <typename Tag, int T>
QK_INLINE void qk_rms_partials(const uint16_t* __restrict__ h, int m0, int M, int K, float (*part)[T]) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll 1
  for (int t = 0; t < T && m0 + t < M; ++t) {
    const uint4* row = reinterpret_cast<const uint4*>(h + (size_t)(m0 + t) * K);
    float s = 0.f;
#pragma unroll 2
    for (int i = (int)threadIdx.x; i < K / 8; i += (int)blockDim.x) {
      const uint4 v = __ldcg(row + i);
      const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float a = qk_bits_to_float((uint16_t)(words[j] & 0xffff), Tag());
        const float b = qk_bits_to_float((uint16_t)(words[j] >> 16), Tag());
        s = fmaf(a, a, fmaf(b, b, s));
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) part[warp][t] = s;
  }
}
template <int T>
QK_INLINE float qk_rms_scale(const float (*part)[T], int t, int m0, int M, int K, float eps) {
  if (m0 + t >= M) return 1.f;
  float total = 0.f;
  for (int w = 0; w < (int)blockDim.x / 32; ++w) total += part[w][t];
  return rsqrtf(total / (float)K + eps);
}

// The decode kernel's main loop (qk_mma_stream's, written out there) over one 16-row tile's chunks first,
// first + step, ... below c1 (wt, meta_row: the lane's weights and its group-0 scales): every load of a batch of U
// chunks is issued before the first use (weights from DRAM, their scales, the first chunk's x), so that a batch pays
// one memory latency, not one per chunk; x comes a chunk ahead, in two buffers that take turns. ready() runs once,
// after the first batch's weights and scales are requested and before the first x is read (the wait for whatever
// writes x).
template <typename Tag, int MT, bool SYM, int U, typename X, typename Ready>
QK_INLINE void qk_stream_chunks(float (&acc)[MT][4], const X& xs, const uint4* wt, const uint16_t* meta_row,
                                const QkGroupOf& group_of, int first, int step, int c1, Ready ready) {
  for (int c = first; c < c1; c += step) {
    uint4 wv[U];
    uint2 mv[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (c + u < c1) {
        wv[u] = qk_ld_stream(wt + (size_t)(c + u) * 32);
        mv[u] = qk_mma_meta_load<SYM>(meta_row, group_of(c + u) * 8);
      }
    if (c == first) ready();
    uint32_t xb[2][MT][8];  // chunk c + u's x in xb[u % 2]; the next chunk's is loaded during this one
    xs.load(c, xb[0]);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (c + u >= c1) break;
      if (u + 1 < U) xs.load(min(c + u + 1, c1 - 1), xb[(u + 1) % 2]);  // past the range: an unused reload
      uint32_t s_lo, s_hi, z_lo, z_hi;
      qk_mma_meta_unpack<Tag, SYM>(mv[u], s_lo, s_hi, z_lo, z_hi);
      qk_mma_chunk<Tag, MT>(acc, wv[u], xb[u % 2], s_lo, s_hi, z_lo, z_hi);
    }
  }
}

// The decode kernel's 16-byte weight loads in flight per thread at 1-2 token tiles (QK_STREAM_U_SMALL) and at 3-4
// (QK_STREAM_U_LARGE): tuning macros, set for an experiment through QUANTKIT_KERNEL_DEFINES (quantkit/kernels/build.py).
#ifndef QK_STREAM_U_SMALL
#define QK_STREAM_U_SMALL 4
#endif
#ifndef QK_STREAM_U_LARGE
#define QK_STREAM_U_LARGE 2
#endif
// QK_STREAM_MIN_BLOCKS, if defined: the blocks of the decode kernel at one token tile that a multiprocessor must be
// able to hold (the launch bounds' second figure; undefined, ptxas chooses the registers), a tuning macro like those.
// The instances with the residual add and RMSNorm folded in (FOLD) hold 8 blocks of 4 warps (4 of 8) at one token
// tile unless it is defined: 64 registers, where ptxas alone took 56 and a stack frame.
#ifdef QK_STREAM_MIN_BLOCKS
#define QK_STREAM_BOUNDS(MT, FOLD, WKW) __launch_bounds__(32 * WKW, MT == 1 ? QK_STREAM_MIN_BLOCKS : 1)
#else
#define QK_STREAM_BOUNDS(MT, FOLD, WKW) __launch_bounds__(32 * WKW, FOLD && MT == 1 ? 32 / WKW : 0)
#endif

// Decode: grid x = ceil(M / 8MT) token tiles, z = split-K, and y by how the block's 4 warps share the work:
//   WK false: y = ceil(N / 64); each warp owns one 16-row tile and streams all of the split's chunks.
//   WK true:  y = N / 16; the 4 warps own the same tile and take turns over the split's chunks in batches of U, so
//             that the block reads 4U consecutive chunks of its tile at a time (one contiguous run of 4U x 512
//             bytes), then add their partial sums through shared memory. A quarter of the split-K partial sums for
//             the same number of blocks.
// Programmatic-launch aware (qk_pdl_*): the first weights are requested before waiting for the previous kernel.
// Weights and scales are loaded into registers U chunks at a time, all of a batch's loads issued before its first
// use; x fragments come a chunk ahead, in two buffers that take turns (no register copies between chunks).
// PF: the block then requests its share of pf into the L2 (the next layer's weights, w4a16_prefetch.h), and reads its
// own weights with the L2 policy pf.stream_evict_first asks for (qk_stream_policy); PF false ignores pf (the same code
// as without the parameter). GLU: the layer is a gated pair (packing.glu_order) and out [M, N / 2] gets silu(gate) * up.
// FOLD: rn, the residual add and RMSNorm folded in (QkResidualNorm; rms with or without GLU, residual without); the
// instances without it ignore rn (the same code as without the parameter). WKW: the warps of a block whose warps share
// a tile (WK), QK_STREAM_WARPS or, in the one-token-tile instances that w4a16_linear(wk_warps=8) asks for, 8: as many
// warps in flight with half the split-K parts. ROPE (WK, MT 1, unsplit, no prefetch, fold or GLU): the layer is a
// fused q/k/v projection and the epilogue applies a decode step's rotary embedding and cache write (QkRope: q into out
// [M, heads * head_dim]); the other instances ignore rope.
template <typename Tag, int MT, bool SYM, bool WK = false, bool PF = false, bool GLU = false, bool FOLD = false,
          int WKW = QK_STREAM_WARPS, bool ROPE = false>
QK_GLOBAL void QK_STREAM_BOUNDS(MT, FOLD, WKW)
    qk_mma_stream(const uint16_t* __restrict__ x, const uint4* __restrict__ w, const uint16_t* __restrict__ meta,
                  const uint16_t* __restrict__ bias, uint16_t* __restrict__ out, float* __restrict__ ws,
                  int* __restrict__ counters, int M, int N, int K, int group_size, int chunks_per_split,
                  const QkPrefetchRanges pf, const QkResidualNorm rn, const QkSumSq sq, const QkRope rope) {
  static_assert(!ROPE || (WK && MT == 1 && !PF && !GLU && !FOLD), "the rotary epilogue: WK, one token tile, alone");
  constexpr int U = MT <= 2 ? QK_STREAM_U_SMALL : QK_STREAM_U_LARGE;  // 16-byte weight loads in flight per thread
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int gid = lane / 4, tig = lane % 4;
  const int n_tiles = N / 16, tile = WK ? blockIdx.y : blockIdx.y * QK_STREAM_WARPS + warp;
  const int m0 = blockIdx.x * 8 * MT;
  const int chunks = K / 64, groups = K / group_size;
  const int c0 = blockIdx.z * chunks_per_split, c1 = min(chunks, c0 + chunks_per_split);
  const int first = WK ? c0 + warp * U : c0, step = WK ? WKW * U : U;

  float acc[1][MT][4];
#pragma unroll
  for (int t = 0; t < MT; ++t) acc[0][t][0] = acc[0][t][1] = acc[0][t][2] = acc[0][t][3] = 0.f;
  const QkDecodeX<MT> xs(x, m0, gid, tig, M, K);
  const QkGroupOf group_of(group_size, tig);
  const uint4* wt = w + (size_t)tile * chunks * 32 + lane;
  const uint16_t* meta_row = meta + ((size_t)tile * groups * 8 + gid) * (SYM ? 2 : 4);  // this lane's, group 0
  const uint64_t policy = PF ? qk_stream_policy(pf.stream_evict_first) : 0;
  QkTrace trace;  // (QK_STREAM_TRACE builds only)
  trace.mark(0);
  [[maybe_unused]] QkRopeLane<Tag> rope_lane;  // (ROPE)
  // FOLD with rn.rms: each warp's part of the tokens' sums of squares, taken right after its wait (qk_rms_partials)
  // or from sq.in
  __shared__ float rms_part[FOLD ? WKW : 1][FOLD ? 8 * MT : 1];
  const bool rms = FOLD && rn.rms != nullptr, loops = tile < n_tiles && first < c1;
  // with sq.in where it can (QkSumSq): one token row's sums from the kernel before, one a thread, requested after the
  // wait and added up after the main loop, instead of the row of h
  const bool ss = rms && WK && sq.in != nullptr && gridDim.z == 1 && M - m0 == 1 && K / 16 <= (int)blockDim.x;
  float ssv = 0.f;
  auto rms_partials = [&] {
    if constexpr (FOLD) {
      if (ss) {
        if ((int)threadIdx.x < K / 16) ssv = __ldcg(sq.in + (size_t)m0 * (K / 16) + threadIdx.x);
      } else if (rms) {
        qk_rms_partials<Tag, 8 * MT>(rn.rms, m0, M, K, rms_part);
      }
    }
  };
  // The loop of qk_stream_chunks written out: through that function nvcc 13.0 schedules the 4- and 8-token-tile
  // instances differently (their SASS no longer that of 712cc89; docs/kernel.md, item 46 on such changes).
  if (tile < n_tiles) {
    for (int c = first; c < c1; c += step) {
      // Every load of the batch is issued before the first use: weights (DRAM), their scales and the first
      // chunk's x (L1/L2), so the batch pays one memory latency, not one per chunk.
      uint4 wv[U];
      uint2 mv[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (c + u < c1) {
          if constexpr (PF)
            wv[u] = qk_ld_stream(wt + (size_t)(c + u) * 32, policy);
          else
            wv[u] = qk_ld_stream(wt + (size_t)(c + u) * 32);
          mv[u] = qk_mma_meta_load<SYM>(meta_row, group_of(c + u) * 8);
        }
      if (c == first) {  // x is the previous kernel's output: the first weights are already on their way
        qk_pdl_wait_then_trigger();
        rms_partials();
        trace.mark(1);
      }
      uint32_t xb[2][MT][8];  // chunk c + u's x in xb[u % 2]; the next chunk's is loaded during this one
      xs.load(c, xb[0]);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (c + u >= c1) break;
        if (u + 1 < U) xs.load(min(c + u + 1, c1 - 1), xb[(u + 1) % 2]);  // past the range: an unused reload
        uint32_t s_lo, s_hi, z_lo, z_hi;
        qk_mma_meta_unpack<Tag, SYM>(mv[u], s_lo, s_hi, z_lo, z_hi);
        qk_mma_chunk<Tag, MT>(acc[0], wv[u], xb[u % 2], s_lo, s_hi, z_lo, z_hi);
      }
    }
  }
  qk_pdl_wait_then_trigger();  // (no-ops once done) warps that had no chunk
  if (!loops) rms_partials();
  // ROPE: warp 0, which writes the tile, requests the step's cos, sin and position before the warps' sums meet
  // (loaded during the main loop instead, they took 28 more registers: 2 blocks of 8 warps a multiprocessor, not 4)
  if constexpr (ROPE)
    if (warp == 0) rope_lane.load(rope, tile, m0, lane, M);
  trace.mark(2);
  // PF: the next layer's weights into the L2: each block's share, from warp 0 once its own reads are done, so that
  // the requests fill the DRAM's idle time in the grid's tail and after it.
  if (PF && pf.n > 0 && warp == 0) {
    const uint64_t block = ((uint64_t)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    qk_l2_prefetch_slices(pf, block * 32 + lane, (uint64_t)gridDim.x * gridDim.y * gridDim.z * 32);
  }
  if constexpr (FOLD)
    if (ss) {  // the warp's part of the row's sum, for the barrier below
#pragma unroll
      for (int o = 16; o > 0; o /= 2) ssv += __shfl_xor_sync(0xffffffffu, ssv, o);
      if (lane == 0) rms_part[warp][0] = ssv;
    }
  // Shared memory of the split-K cluster reduction: the 4 warps' sums, or with WK warp 0's, which reuses part[0].
  __shared__ float red[WK ? 1 : QK_STREAM_WARPS * MT * 4 * 32];
  __shared__ float part[WK ? WKW - 1 : 1][WK ? MT * 4 : 1][32];
  if constexpr (WK) {  // warps 1..3 hand their partial sums to warp 0, which alone writes the tile
    if (warp > 0)
#pragma unroll
      for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) part[warp - 1][4 * t + e][lane] = acc[0][t][e];
    __syncthreads();
    if (warp == 0)
#pragma unroll
      for (int v = 0; v < WKW - 1; ++v)
#pragma unroll
        for (int t = 0; t < MT; ++t)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[0][t][e] += part[v][4 * t + e][lane];
  } else if (rms) {
    __syncthreads();  // every warp's rms_part (uniform: rn is the launch's)
  }
  if constexpr (FOLD)
    if (rms)  // the RMSNorm's scale of each token, after the product (with WK only warp 0's sums are the tile's)
#pragma unroll
      for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float scale = qk_rms_scale<8 * MT>(rms_part, 8 * t + 2 * tig + e, m0, M, K, rn.eps);
          acc[0][t][e] *= scale;
          acc[0][t][e + 2] *= scale;
        }
  const QkClusterTile ct = WK ? QkClusterTile{&part[0][0][0], (int)blockIdx.y, 1}
                              : QkClusterTile{red, (int)blockIdx.y * QK_STREAM_WARPS, QK_STREAM_WARPS};
  if constexpr (ROPE) {  // unsplit: warp 0 holds the tile's sums
    if (warp == 0 && tile < n_tiles) rope_lane.store(acc[0][0], rope, tile, m0, lane, bias, out, M);
  } else {
    // (the stream's sums of squares, sq.out, from the fold's instances whose warps share a tile only)
    qk_mma_epilogue<Tag, 1, MT, GLU, FOLD && WK>(acc, WK && warp > 0 ? n_tiles : tile, n_tiles, m0, lane, bias, out,
                                                ws, counters, M, N, ct, FOLD ? rn : QkResidualNorm(),
                                                FOLD && WK ? sq.out : nullptr);
  }
  trace.mark(3);
  trace.write(w);
}

// The gated MLP of a decode step in one launch (M <= 8, one token tile): down(silu(gate(x)) * up(x)), gate/up a gated
// pair in packing.glu_order ([N1, K1], N1 = 2 I) and down [N2, I]. Block b of the 1-D grid is a work item: first the
// n1 = N1 / 16 tiles of the gated pair (one 16-row tile each, all of K1, the block's warps sharing it as in
// qk_mma_stream with WK; the SiLU-and-multiply epilogue writes its 8 outputs to mid [M, I]), then down's tiles, split
// z major (split z reads mid's chunks [z cps, (z + 1) cps)). Each pair tile adds one to its split's arrival counter
// (sync[z]) after its writes; a down item requests its first weights, then waits until its split's pair tiles have all
// arrived, and reads mid. So down's reads start as soon as the part of mid they need exists, not when
// the whole gated pair's grid has ended, and there is one launch instead of two. The wait relies on the GPU
// starting a grid's blocks in the order of their index (as single-pass scans such as CUB's do): a down item then
// waits only for blocks that have started. Down's splits add up through the workspace (ws, a counter a tile in
// counters); the last down item to finish (sync[splits]) sets sync back to zero for the next launch.
// Programmatic-launch aware: every block requests its first weights, then waits for the kernel before (x; and the
// same kernel's previous launch, whose counters it reuses) before touching anything written.
template <typename Tag, bool SYM>
QK_GLOBAL void __launch_bounds__(QK_STREAM_WARPS * 32, 8)  // 64 registers, as the decode kernel's one-tile instances
    qk_mma_mlp(const uint16_t* __restrict__ x, const uint4* __restrict__ w1, const uint16_t* __restrict__ meta1,
               const uint4* __restrict__ w2, const uint16_t* __restrict__ meta2, uint16_t* __restrict__ mid,
               uint16_t* __restrict__ out, float* __restrict__ ws, int* __restrict__ counters, int* __restrict__ sync,
               int M, int N1, int K1, int N2, int group1, int group2, int cps) {
  constexpr int U = QK_STREAM_U_SMALL;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int K2 = N1 / 2, n1 = N1 / 16, n2 = N2 / 16, chunks2 = K2 / 64, splits = (chunks2 + cps - 1) / cps;
  const int item = blockIdx.x;
  const bool pair = item < n1;
  const int tile = pair ? item : (item - n1) % n2, z = pair ? 0 : (item - n1) / n2;
  const int K = pair ? K1 : K2, chunks = K / 64, group_size = pair ? group1 : group2;
  const int c0 = pair ? 0 : z * cps, c1 = pair ? chunks : min(chunks, c0 + cps);
  const uint4* wt = (pair ? w1 : w2) + (size_t)tile * chunks * 32 + lane;
  const uint16_t* meta_row =
      (pair ? meta1 : meta2) + ((size_t)tile * (K / group_size) * 8 + lane / 4) * (SYM ? 2 : 4);
  const QkGroupOf group_of(group_size, lane % 4);
  float acc[1][1][4] = {};
  if (pair) {
    const QkDecodeX<1> xs(x, 0, lane / 4, lane % 4, M, K1);
    qk_stream_chunks<Tag, 1, SYM, U>(acc[0], xs, wt, meta_row, group_of, warp * U, QK_STREAM_WARPS * U, c1,
                                     [] { qk_pdl_wait_then_trigger(); });
  } else {
    const QkDecodeX<1, true> xs(mid, 0, lane / 4, lane % 4, M, K2);
    const int need = 8 * (c1 - c0);  // the pair tiles that write mid's chunks c0 .. c1
    const int* arrived = sync + z;
    qk_stream_chunks<Tag, 1, SYM, U>(acc[0], xs, wt, meta_row, group_of, c0 + warp * U, QK_STREAM_WARPS * U, c1, [&] {
      qk_pdl_wait_then_trigger();
      if (lane == 0) {  // one lane a warp polls, backing off, then acquires what the arrivals published
        int seen;
        while (true) {
          asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];\n" : "=r"(seen) : "l"(arrived) : "memory");
          if (seen >= need) break;
          __nanosleep(64);
        }
        asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
      }
      __syncwarp();
    });
  }
  qk_pdl_wait_then_trigger();  // (no-ops once done) warps that had no chunk
  __shared__ float part[QK_STREAM_WARPS - 1][4][32];
  if (warp > 0)
#pragma unroll
    for (int e = 0; e < 4; ++e) part[warp - 1][e][lane] = acc[0][0][e];
  __syncthreads();
  if (warp == 0)
#pragma unroll
    for (int v = 0; v < QK_STREAM_WARPS - 1; ++v)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[0][0][e] += part[v][e][lane];
  if (pair) {
    if (warp == 0) {
      qk_mma_store_out<Tag, 1, 1, true>(acc, tile, n1, 0, lane, nullptr, mid, M, N1);
      __threadfence();  // this lane's outputs, then the arrival that publishes them
      __syncwarp();
      if (lane == 0) atomicAdd(sync + tile / (8 * cps), 1);
    }
    return;
  }
  const int gid = lane / 4, tig = lane % 4;
  if (splits > 1) {
    if (warp == 0)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int tok = 2 * tig + (e & 1);
        if (tok < M) __stcg(ws + ((size_t)z * M + tok) * N2 + tile * 16 + gid + 8 * (e >> 1), acc[0][0][e]);
      }
    if (qk_split_arrive<QK_STREAM_WARPS * 32>(counters + tile, splits)) {
      if (warp == 0)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int tok = 2 * tig + (e & 1);
          float v = 0.f;
          if (tok < M)
            for (int s = 0; s < splits; ++s) v += __ldcg(ws + ((size_t)s * M + tok) * N2 + tile * 16 + gid + 8 * (e >> 1));
          acc[0][0][e] = v;
        }
      qk_mma_store_out<Tag, 1, 1>(acc, warp == 0 ? tile : n2, n2, 0, lane, nullptr, out, M, N2);
    }
  } else {
    qk_mma_store_out<Tag, 1, 1>(acc, warp == 0 ? tile : n2, n2, 0, lane, nullptr, out, M, N2);
  }
  if (threadIdx.x == 0 && atomicAdd(sync + splits, 1) == n2 * splits - 1) {
    // every pair tile has arrived and every down item is past its wait: the counters go back to zero
    for (int i = 0; i <= splits; ++i) sync[i] = 0;
  }
}

#define QK_STAGED_WARPS 8
#define QK_STAGED_NT 2
#define QK_STAGED_P 2  // chunks per stage

// Prefill: grid x = ceil(M / 8MT) token tiles, y = ceil(N / 256) (8 warps x 2 tiles), z = split-K.
template <typename Tag, int MT, bool SYM>
QK_GLOBAL void __launch_bounds__(QK_STAGED_WARPS * 32)
    qk_mma_staged(const uint16_t* __restrict__ x, const uint4* __restrict__ w, const uint16_t* __restrict__ meta,
                  const uint16_t* __restrict__ bias, uint16_t* __restrict__ out, float* __restrict__ ws,
                  int* __restrict__ counters, int M, int N, int K, int group_size, int chunks_per_split) {
  constexpr int NT = QK_STAGED_NT, P = QK_STAGED_P, THREADS = QK_STAGED_WARPS * 32, ROWS = 8 * MT;
  constexpr int ROW_BYTES = P * 128 + 16;     // one stage of x per token, padded off the bank period
  constexpr int XV = ROWS * P * 8 / THREADS;  // 16-byte pieces of x each thread stages
  static_assert(ROWS * P * 8 % THREADS == 0, "x stage must split evenly over the block");
  __shared__ __align__(16) unsigned char xs[ROWS * ROW_BYTES];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int gid = lane / 4, tig = lane % 4;
  const int n_tiles = N / 16, tile0 = (blockIdx.y * QK_STAGED_WARPS + warp) * NT;
  const int m0 = blockIdx.x * ROWS;
  const int chunks = K / 64, groups = K / group_size;
  const int c0 = blockIdx.z * chunks_per_split, c1 = min(chunks, c0 + chunks_per_split);
  const QkGroupOf group_of(group_size, tig);

  float acc[NT][MT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int t = 0; t < MT; ++t) acc[nt][t][0] = acc[nt][t][1] = acc[nt][t][2] = acc[nt][t][3] = 0.f;

  uint4 wc[P][NT], wn[P][NT], xr[XV];
  auto load_w = [&](int cs, uint4(&dst)[P][NT]) {
#pragma unroll
    for (int u = 0; u < P; ++u)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        if (cs + u < c1 && tile0 + nt < n_tiles)
          dst[u][nt] = qk_ld_stream(w + ((size_t)(tile0 + nt) * chunks + cs + u) * 32 + lane);
  };
  auto load_x = [&](int cs) {
#pragma unroll
    for (int v = 0; v < XV; ++v) {
      const int idx = v * THREADS + threadIdx.x, row = idx / (P * 8), q = idx % (P * 8);
      const int tok = m0 + row, c = cs + q / 8;
      xr[v] = (tok < M && c < c1) ? __ldg(reinterpret_cast<const uint4*>(x + (size_t)tok * K + (size_t)cs * 64) + q)
                                  : make_uint4(0, 0, 0, 0);
    }
  };
  if (c0 < c1) load_w(c0, wc), load_x(c0);
  for (int cs = c0; cs < c1; cs += P) {
    __syncthreads();  // every warp is done with the previous stage's x
#pragma unroll
    for (int v = 0; v < XV; ++v) {
      const int idx = v * THREADS + threadIdx.x, row = idx / (P * 8), q = idx % (P * 8);
      *reinterpret_cast<uint4*>(xs + row * ROW_BYTES + q * 16) = xr[v];
    }
    __syncthreads();
    if (cs + P < c1) load_w(cs + P, wn), load_x(cs + P);  // next stage in flight during this one
#pragma unroll
    for (int u = 0; u < P; ++u) {
      if (cs + u >= c1) break;
      uint32_t xb[MT][8];
#pragma unroll
      for (int t = 0; t < MT; ++t) {
        const unsigned char* src = xs + (8 * t + gid) * ROW_BYTES + u * 128 + tig * 32;
        const uint4 lo = *reinterpret_cast<const uint4*>(src), hi = *reinterpret_cast<const uint4*>(src + 16);
        xb[t][0] = lo.x, xb[t][1] = lo.y, xb[t][2] = lo.z, xb[t][3] = lo.w;
        xb[t][4] = hi.x, xb[t][5] = hi.y, xb[t][6] = hi.z, xb[t][7] = hi.w;
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int tile = tile0 + nt;
        if (tile >= n_tiles) break;  // warp-uniform
        uint32_t s_lo, s_hi, z_lo, z_hi;
        qk_mma_meta<Tag, SYM>(meta, ((size_t)tile * groups + group_of(cs + u)) * 8 + gid, s_lo, s_hi, z_lo, z_hi);
        qk_mma_chunk<Tag, MT>(acc[nt], wc[u][nt], xb, s_lo, s_hi, z_lo, z_hi);
      }
    }
#pragma unroll
    for (int u = 0; u < P; ++u)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) wc[u][nt] = wn[u][nt];
  }
  qk_mma_epilogue<Tag, NT, MT>(acc, tile0, n_tiles, m0, lane, bias, out, ws, counters, M, N);
}

// The [N, K] weight in T from the mma layout (for the dequantize-then-GEMM path at large M). One thread per
// 16-byte word group: it owns two rows x 16 consecutive k and writes them as four 16-byte stores.
template <typename Tag, bool SYM>
QK_GLOBAL void __launch_bounds__(256)
    qk_mma_dequant(const uint4* __restrict__ w, const uint16_t* __restrict__ meta, uint16_t* __restrict__ out, int N,
                   int K, int group_size) {
  const size_t idx = (size_t)blockIdx.x * 256 + threadIdx.x;  // (tile, chunk, lane)
  const int chunks = K / 64;
  if (idx >= (size_t)(N / 16) * chunks * 32) return;
  const int lane = idx % 32, c = (idx / 32) % chunks, tile = idx / 32 / chunks;
  const int gid = lane / 4, tig = lane % 4;
  uint32_t s_lo, s_hi, z_lo, z_hi;
  qk_mma_meta<Tag, SYM>(meta, ((size_t)tile * (K / group_size) + (64 * c + 16 * tig) / group_size) * 8 + gid,
                        s_lo, s_hi, z_lo, z_hi);
  const uint4 wv = __ldg(w + idx);
  const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
  uint32_t row_lo[8], row_hi[8];  // 16 values of each row, k = 16*tig + 4*j + 2*h + e
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t v = QkMma<Tag>::dequant(qk_magic_pair<Tag>(words[j], i), (i & 1) ? z_hi : z_lo,
                                             (i & 1) ? s_hi : s_lo);
      ((i & 1) ? row_hi : row_lo)[2 * j + (i >> 1)] = v;
    }
  const int n = tile * 16 + gid, k = 64 * c + 16 * tig;
  uint4* lo = reinterpret_cast<uint4*>(out + (size_t)n * K + k);
  uint4* hi = reinterpret_cast<uint4*>(out + (size_t)(n + 8) * K + k);
  lo[0] = make_uint4(row_lo[0], row_lo[1], row_lo[2], row_lo[3]);
  lo[1] = make_uint4(row_lo[4], row_lo[5], row_lo[6], row_lo[7]);
  hi[0] = make_uint4(row_hi[0], row_hi[1], row_hi[2], row_hi[3]);
  hi[1] = make_uint4(row_hi[4], row_hi[5], row_hi[6], row_hi[7]);
}

#endif  // QK_IS_CUDA
