// w4a16_rope.h — a decode step's rotary embedding and key/value cache write, which the decode kernel
// (w4a16_mma_cuda.h: qk_mma_stream's ROPE instances) applies in its epilogue to a fused q/k/v projection.
#pragma once

#include <cstdint>

// The layer is [q; k; v] of heads query heads and kv heads key/value heads of head_dim rows each, with the rows of
// every q and k head in packing.rope_order: each 16-row tile of a head holds dims d .. d + 7 and then d + head_dim / 2
// .. + 7, so that a thread's C rows gid and gid + 8 are one rotation pair; v's rows as they are. Token t of the step
// is sequence t. The epilogue rotates each pair with the token's cos and sin (transformers' rotate_half convention:
// y_d = x_d cos_d - x_(d+h) sin_d, y_(d+h) = x_(d+h) cos_(d+h) + x_d sin_(d+h), in fp32 from the outputs rounded to
// 16 bits, rounded once), writes q into q [M, heads * head_dim] in its own order, and k and v into the caches at
// position *pos (none where it is outside the cache).
struct QkRope {
  const uint16_t* cos = nullptr;  // [M or 1, head_dim] rows, cs_row apart (0: one row for every token)
  const uint16_t* sin = nullptr;
  const int64_t* pos = nullptr;  // the cache position of the step (one element, the same for every sequence)
  uint16_t* k_cache = nullptr;   // [M, kv, len, head_dim], element strides cb, ch, cs (v_cache alike)
  uint16_t* v_cache = nullptr;
  int64_t cs_row = 0, cb = 0, ch = 0, cs = 0;
  int heads = 0, head_dim = 0, rot_tiles = 0, len = 0;  // rot_tiles: the 16-row tiles of q and k, (heads + kv) D / 16
};
