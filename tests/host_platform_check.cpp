// The CPU platform's own promises (csrc/platform_host.h), on toy kernels: a barrier makes other threads' shared-memory
// writes visible, a missing one shows as a wrong read, a wave exchanges A rows through qk_wmma16 in gfx11's layout,
// and threads that wait at barriers no release can open stop the launch. Prints "N cases, F failures".
#include <cstdio>

#include "platform.h"

static int* g_out;

// Thread t of block b writes shared[t] = 1000 b + t, then (SYNC: after the block's barrier) reads its neighbour's.
template <bool SYNC>
QK_GLOBAL void neighbour(int n) {
  __shared__ int shared[256];
  const int t = qk_thread_x();
  shared[t] = 1000 * qk_block_x() + t;
  if (SYNC) qk_sync();
  g_out[t] = shared[(t + 1) % n];
}

// One 16x16x16 product: lane l holds row l % 16 of A and column l % 16 of B (A[r][k] = r + k, B[k][c] = k == c), so
// C = A and c[i] of lane l is A[2i + l / 16][l % 16].
QK_GLOBAL void wmma_identity() {
  const int l = qk_thread_x() % 32, r = l % 16;
  uint32_t a[8], b[8];
  for (int p = 0; p < 8; ++p) {
    const uint16_t lo = qk_float_to_bits((float)(r + 2 * p), QkF16());
    const uint16_t hi = qk_float_to_bits((float)(r + 2 * p + 1), QkF16());
    a[p] = lo | (uint32_t)hi << 16;
    const uint16_t one = qk_float_to_bits(1.f, QkF16()), zero = 0;
    b[p] = (2 * p == r ? one : zero) | (uint32_t)(2 * p + 1 == r ? one : zero) << 16;
  }
  float c[8] = {};
  qk_wmma16(c, a, b, QkF16());
  for (int i = 0; i < 8; ++i) g_out[l * 8 + i] = (int)c[i];
}

// Lane 0 waits at the block's barrier while the other lanes wait at their wave's: no release can open either.
QK_GLOBAL void split_barriers() {
  if (qk_thread_x() == 0) {
    qk_sync();
    return;
  }
  float c[8] = {};
  const uint32_t a[8] = {}, b[8] = {};
  qk_wmma16(c, a, b, QkF16());
}

int main() {
  int out[256], cases = 0, failures = 0;
  g_out = out;
  auto check = [&](bool ok, const char* what) {
    ++cases;
    if (!ok) ++failures, std::printf("FAILED: %s\n", what);
  };
  check(qk_host_launch(neighbour<true>, dim3(2), 256, 256), "launch with the barrier");
  bool all = true;
  for (int t = 0; t < 256; ++t) all &= out[t] == 1000 + (t + 1) % 256;  // the last block's
  check(all, "with qk_sync every thread reads its neighbour's write");
  check(qk_host_launch(neighbour<false>, dim3(1), 256, 256), "launch without the barrier");
  int stale = 0;
  for (int t = 0; t < 256; ++t) stale += out[t] != (t + 1) % 256;
  check(stale > 0, "without qk_sync some thread reads before its neighbour has written");
  check(qk_host_launch(wmma_identity, dim3(1), 32), "launch of the wave's product");
  all = true;
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 8; ++i) all &= out[l * 8 + i] == (2 * i + l / 16) + (l % 16);
  check(all, "qk_wmma16: c[i] of lane l is row 2i + l / 16, column l % 16");
  check(!qk_host_launch(split_barriers, dim3(1), 32), "a launch stuck at barriers that cannot open is refused");
  std::printf("%d cases, %d failures\n", cases, failures);
  return failures != 0;
}
