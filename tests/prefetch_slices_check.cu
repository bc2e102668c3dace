// prefetch_slices_check.cu — host-only check of how the L2 prefetch cuts its byte ranges among threads
// (qk_prefetch_each_slice in csrc/w4a16_prefetch.h), built and run by tests/test_prefetch_slices.py. Reads cases
// "threads n bytes_0 .. bytes_{n-1}", one a line, and for each runs every thread me < threads with stride threads:
// every 16-byte unit of every range must be requested exactly once, by a slice of at most QK_PREFETCH_SLICE bytes
// that lies inside its range, and a thread's slices must come in increasing order. Prints each failure and a
// summary; exit status 1 on any.
#include <cstdio>
#include <vector>

#include "w4a16_prefetch.h"

int main() {
  // stand-in addresses, range i at (i + 1) << 40: only the offsets are checked, nothing is read
  auto base = [](int i) { return reinterpret_cast<const char*>((uintptr_t)(i + 1) << 40); };
  unsigned long long threads;
  int n, cases = 0, failures = 0;
  while (std::scanf("%llu %d", &threads, &n) == 2) {
    ++cases;
    QkPrefetchRanges r = {};
    r.n = n;
    std::vector<std::vector<int>> units(n);
    for (int i = 0; i < n; ++i) {
      unsigned long long b;
      if (std::scanf("%llu", &b) != 1) return 2;
      r.p[i] = base(i);
      r.bytes[i] = b;
      units[i].assign(b / 16, 0);
    }
    bool ok = true;
    for (unsigned long long me = 0; me < threads; ++me) {
      const char* last = nullptr;
      int last_range = -1;
      qk_prefetch_each_slice(r, me, threads, [&](const char* p, uint32_t bytes) {
        const int i = (int)(((uintptr_t)p >> 40) - 1);
        if (i < 0 || i >= n) {
          ok = false;
          return;
        }
        const unsigned long long off = (uintptr_t)p - (uintptr_t)base(i);
        if (bytes == 0 || bytes > QK_PREFETCH_SLICE || bytes % 16 || off % 16 || off + bytes > r.bytes[i] ||
            (i == last_range && p <= last) || i < last_range) {
          ok = false;
          return;
        }
        for (unsigned long long u = off / 16; u < (off + bytes) / 16; ++u) ++units[i][u];
        last = p, last_range = i;
      });
    }
    for (int i = 0; i < n; ++i)
      for (int c : units[i]) ok = ok && c == 1;
    if (!ok && ++failures <= 20) {
      std::printf("threads=%llu ranges=%d:", threads, n);
      for (int i = 0; i < n; ++i) std::printf(" %llu", (unsigned long long)r.bytes[i]);
      std::printf(": a unit not requested exactly once, or a slice out of its range or order\n");
    }
  }
  std::printf("%d cases, %d failures\n", cases, failures);
  return failures ? 1 : 0;
}
