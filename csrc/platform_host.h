// platform_host.h — the third platform of platform.h: the CPU, for the kernels both GPU platforms compile (dot2
// decode, WMMA prefill), so that CI runs their source with no GPU (tests/test_host_kernels.py, through w4a16_host.cpp).
// Built by a host compiler with QK_HOST defined (g++ or clang++, -std=c++20); platform.h includes this file then, and
// only then.
//
// A launch (qk_host_launch) runs the grid's blocks one after another, each block's threads as fibers (ucontext) on the
// calling thread: one runs until it reaches a barrier or returns, then the next; a barrier opens once every thread it
// waits for (the block's, or a wave's 32 lanes) has reached it, and a thread that has returned is waited for by none
// (as an exited GPU thread holds up no barrier). What a GPU gives its threads, the emulation gives them too:
//   - indices (qk_thread_x, qk_block_x/y/z, qk_grid_z): the running fiber's own;
//   - qk_sync: the block's barrier; shared memory (__shared__: a static of the kernel's instance, one block at a time)
//     visible across it. A thread runs to its next barrier before the next thread starts, so a read of another thread's
//     write with no barrier between them reads what was there before: a missing qk_sync shows as a wrong result;
//   - a wave: the barrier of its 32 lanes, at which qk_wmma16 waits to read the rows of A the other lanes hold;
//   - threads that wait at barriers no release can open (some at the block's, others at their wave's, or a barrier
//     some threads never reach): the launch stops and says so (qk_host_launch returns false), where a GPU would hang
//     or do anything;
//   - atomics (qk_atomic_cas32/64): the compiler's __atomic builtins on the same words.
// The arithmetic stand-ins are CUDA's (platform.h): dot2 as two fp32 FMAs in order, WMMA as fp32 FMAs in k order, fp16
// pair arithmetic rounded once an operation. So this checks the kernels' indexing, dequantization, factored zero
// correction, split-K and epilogues, not gfx11's own rounding (which the RDNA3 ISA check and an NVIDIA run of the same
// source cannot check either).
#pragma once

#include <stdint.h>

#include <math.h>
#include <ucontext.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#define QK_DEVICE inline
#define QK_GLOBAL
#define QK_INLINE inline
#define __launch_bounds__(...)
#define __shared__ static
#define QK_WAVE 32

struct QkF16 {};
struct QkBF16 {};

typedef uint16_t qk_half;
typedef uint16_t qk_bf16;
struct alignas(8) uint2 {
  uint32_t x, y;
};
struct alignas(16) uint4 {
  uint32_t x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
QK_INLINE int min(int a, int b) { return a < b ? a : b; }

// A block's threads as fibers, and where each one is: running (or ready to), waiting at the block's barrier or at its
// wave's, or returned.
struct QkHostBlock {
  enum State { RUN, AT_BLOCK, AT_WAVE, DONE };
  int threads, block_x, block_y, block_z, grid_z;
  std::vector<ucontext_t> fiber;
  std::vector<State> state;
  std::vector<uint32_t> wave_a;  // the waves' A operands, a row of 8 words a lane (qk_wmma16)
  ucontext_t scheduler;
  int current = 0;
};
inline thread_local QkHostBlock* qk_host_block;

QK_INLINE int qk_thread_x() { return qk_host_block->current; }
QK_INLINE int qk_block_x() { return qk_host_block->block_x; }
QK_INLINE int qk_block_y() { return qk_host_block->block_y; }
QK_INLINE int qk_block_z() { return qk_host_block->block_z; }
QK_INLINE int qk_grid_z() { return qk_host_block->grid_z; }
// The running thread stops at a barrier (AT_BLOCK or AT_WAVE) until the launch opens it.
QK_INLINE void qk_host_wait(QkHostBlock::State at) {
  QkHostBlock& b = *qk_host_block;
  const int t = b.current;
  b.state[t] = at;
  swapcontext(&b.fiber[t], &b.scheduler);
}
QK_INLINE void qk_sync() { qk_host_wait(QkHostBlock::AT_BLOCK); }

QK_INLINE float qk_bits_to_float(uint16_t h, QkF16) { return (float)std::bit_cast<_Float16>(h); }
QK_INLINE float qk_bits_to_float(uint16_t h, QkBF16) { return std::bit_cast<float>((uint32_t)h << 16); }
QK_INLINE uint16_t qk_float_to_bits(float f, QkF16) { return std::bit_cast<uint16_t>((_Float16)f); }
QK_INLINE uint16_t qk_float_to_bits(float f, QkBF16) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                             // round to nearest even
  return (uint16_t)(u >> 16);
}
template <typename Tag>
QK_INLINE float2 qk_pair_to_float2(uint32_t v, Tag) {
  return {qk_bits_to_float((uint16_t)(v & 0xffffu), Tag()), qk_bits_to_float((uint16_t)(v >> 16), Tag())};
}
QK_INLINE unsigned long long qk_atomic_cas64(unsigned long long* p, unsigned long long cmp, unsigned long long v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return cmp;  // the word as it was
}
QK_INLINE unsigned int qk_atomic_cas32(unsigned int* p, unsigned int cmp, unsigned int v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return cmp;
}
// (a - z) * s on two fp16 values, each operation rounded once to fp16 (double holds both results exactly).
QK_INLINE uint32_t qk_sub_mul2(uint32_t a, uint32_t z, uint32_t s) {
  uint32_t r = 0;
  for (int h = 0; h < 2; ++h) {
    const auto half = [&](uint32_t v) { return (double)qk_bits_to_float((uint16_t)(v >> (16 * h)), QkF16()); };
    const _Float16 d = (_Float16)(half(a) - half(z));
    r |= (uint32_t)std::bit_cast<uint16_t>((_Float16)((double)d * half(s))) << (16 * h);
  }
  return r;
}
// Word j of the A row that lane holds, for the WMMA stand-in (platform.h): the wave's lanes write their rows into its
// buffer and wait at its barrier; done() waits there again, so that every lane has read the rows before any writes its
// next ones.
struct QkWaveRows {
  uint32_t (*rows)[8];
  QK_INLINE explicit QkWaveRows(const uint32_t (&a)[8]) {
    const int t = qk_thread_x();
    rows = reinterpret_cast<uint32_t(*)[8]>(qk_host_block->wave_a.data() + (size_t)(t / 32) * 32 * 8);
    std::memcpy(rows[t % 32], a, sizeof(a));
    qk_host_wait(QkHostBlock::AT_WAVE);
  }
  QK_INLINE uint32_t operator()(int lane, int j) const { return rows[lane][j]; }
  QK_INLINE void done() const { qk_host_wait(QkHostBlock::AT_WAVE); }
};

// Opens what barriers can open (every live thread of the block, or of a wave, waiting at it); false if none can while
// threads wait.
inline bool qk_host_open_barriers(QkHostBlock& b) {
  using S = QkHostBlock::State;
  bool waiting = false, opened = false, all_at_block = true;
  for (int t = 0; t < b.threads; ++t) {
    waiting |= b.state[t] == S::AT_BLOCK || b.state[t] == S::AT_WAVE;
    all_at_block &= b.state[t] == S::AT_BLOCK || b.state[t] == S::DONE;
  }
  if (!waiting) return true;
  for (int w = 0; w * 32 < b.threads; ++w) {
    const int end = std::min(b.threads, 32 * (w + 1));
    bool all = true;
    for (int t = 32 * w; t < end; ++t) all &= b.state[t] == S::AT_WAVE || b.state[t] == S::DONE;
    for (int t = 32 * w; t < end && all; ++t)
      if (b.state[t] == S::AT_WAVE) b.state[t] = S::RUN, opened = true;
  }
  for (int t = 0; t < b.threads && all_at_block && !opened; ++t)
    if (b.state[t] == S::AT_BLOCK) b.state[t] = S::RUN, opened = true;
  return opened;
}

// kernel<<<grid, threads>>>(args...) on the CPU (see the top of this file); false where its threads wait at barriers
// that cannot open (the launch stops there).
template <typename... Params, typename... Args>
bool qk_host_launch(void (*kernel)(Params...), dim3 grid, int threads, Args... args) {
  constexpr size_t STACK = 256 << 10;
  std::unique_ptr<char[]> stacks(new char[STACK * threads]);
  static thread_local std::function<void()> body;
  body = [&] { kernel(args...); };
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        QkHostBlock b;
        b.threads = threads, b.block_x = (int)x, b.block_y = (int)y, b.block_z = (int)z, b.grid_z = (int)grid.z;
        b.fiber.resize(threads);
        b.state.assign(threads, QkHostBlock::RUN);
        b.wave_a.assign((size_t)(threads + 31) / 32 * 32 * 8, 0u);
        qk_host_block = &b;
        for (int t = 0; t < threads; ++t) {
          getcontext(&b.fiber[t]);
          b.fiber[t].uc_stack.ss_sp = stacks.get() + STACK * t;
          b.fiber[t].uc_stack.ss_size = STACK;
          b.fiber[t].uc_link = &b.scheduler;
          makecontext(&b.fiber[t], +[] {
            body();
            qk_host_block->state[qk_host_block->current] = QkHostBlock::DONE;
          }, 0);
        }
        bool live = true;
        while (live) {
          live = false;
          for (int t = 0; t < threads; ++t)
            if (b.state[t] == QkHostBlock::RUN) b.current = t, swapcontext(&b.scheduler, &b.fiber[t]);
          for (int t = 0; t < threads; ++t) live |= b.state[t] != QkHostBlock::DONE;
          if (live && !qk_host_open_barriers(b)) {
            qk_host_block = nullptr;
            return false;
          }
        }
        qk_host_block = nullptr;
      }
  return true;
}
