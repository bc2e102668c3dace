// ws_walk_check.cu — host-only check of the warp-specialized kernel's stream-K walk (QkWsWalk, qk_ws_sk_item in
// csrc/w4a16_wgmma_ws_cuda.h), built and run by tests/test_ws_walk.py. Reads cases "M N K bt ks ctas sk_blocks", one a
// line, and for each walks every block's items as the kernel does: every chunk of every tile must be computed by
// exactly one item; the items of a tile must agree on nz and carry z = 0 .. nz - 1 once each, and nz must not exceed
// the workspace depth the launcher allocates (max_splits). Prints each failure and a summary; exit status 1 on any.
#include <algorithm>
#include <cstdio>
#include <vector>

#include "w4a16_wgmma_ws_cuda.h"

int main() {
  int M, N, K, bt, ks, ctas, sk_blocks, cases = 0, failures = 0;
  auto fail = [&](const char* what, int a, int b) {
    if (++failures <= 20) std::printf("M=%d N=%d K=%d bt=%d ctas=%d sk_blocks=%d: %s (%d, %d)\n", M, N, K, bt, ctas,
                                      sk_blocks, what, a, b);
  };
  while (std::scanf("%d %d %d %d %d %d %d", &M, &N, &K, &bt, &ks, &ctas, &sk_blocks) == 7) {
    ++cases;
    const QkWsWalk w(ctas, sk_blocks, M, N, K, bt, ks);
    if (!w.valid()) {
      fail("walk refused", (int)w.units, sk_blocks);
      continue;
    }
    const int chunks = K / 64;
    std::vector<int> cover((size_t)w.tiles * chunks, 0), nz(w.tiles, 0);
    std::vector<std::vector<int>> zs(w.tiles);
    for (int g = 0; g < ctas; ++g) {
      QkWsItem it;
      for (int j = 0; qk_ws_sk_item(w, g, j, it); ++j) {
        if (j > w.tiles + 2) {
          fail("runaway walk at block", g, j);
          break;
        }
        if (it.cell < 0 || it.cell >= w.tiles || it.c0 < 0 || it.c0 >= it.c1 || it.c1 > chunks) {
          fail("bad item: cell, c0", it.cell, it.c0);
          continue;
        }
        if (it.bx != it.cell % w.tiles_x || it.by != it.cell / w.tiles_x) fail("bad tile coordinates", it.bx, it.by);
        if (it.c0 % ks) fail("run not on a step", it.c0, ks);
        for (int c = it.c0; c < it.c1; ++c) ++cover[(size_t)it.cell * chunks + c];
        if (nz[it.cell] && nz[it.cell] != it.nz) fail("items of a tile disagree on nz", nz[it.cell], it.nz);
        nz[it.cell] = it.nz;
        if (it.z < 0 || it.z >= it.nz) fail("z out of range", it.z, it.nz);
        zs[it.cell].push_back(it.z);
      }
    }
    for (size_t i = 0; i < cover.size(); ++i)
      if (cover[i] != 1) {
        fail("chunk computed other than once: tile, chunk", (int)(i / chunks), (int)(i % chunks));
        break;
      }
    for (int t = 0; t < w.tiles; ++t) {
      std::sort(zs[t].begin(), zs[t].end());
      for (int z = 0; z < (int)zs[t].size(); ++z)
        if (zs[t][z] != z || (int)zs[t].size() != nz[t]) {
          fail("a tile's parts are not z = 0 .. nz - 1: tile, nz", t, nz[t]);
          break;
        }
      if (nz[t] > w.max_splits()) fail("more parts than the workspace holds", nz[t], w.max_splits());
    }
  }
  std::printf("%d cases, %d failures\n", cases, failures);
  return failures || !cases ? 1 : 0;
}
