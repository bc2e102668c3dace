"""How fast can the decode kernel's access pattern stream at all? Read-only probe kernels (CuPy, compiled at run
time) that load exactly the bytes of the decode kernel's "mma" layout in its order, with no dequantization and no
MMA, beside the real kernel and a plain linear read of the same bytes, all timed the same way (one launch replayed
from a CUDA graph after a 256 MB L2 flush, CUDA events, median).

    python3 bench/stream_probe.py --out stream_probe.json

Patterns (each warp reads 16 bytes a lane, 512 contiguous bytes a load, as qk_mma_stream does):
  tiles       qk_mma_stream's: grid (1, N/64, splits), warp = one 16-row tile, its split's chunks in batches of U
  tiles_wk    the block's 4 warps share one tile and take turns over batches of U chunks (4U x 512 contiguous bytes)
  tiles_work  tiles with about as many integer instructions per chunk as the real kernel's dequantization and MMAs
  tiles_meta  tiles_work plus each chunk's scales loaded as the kernel loads them (4 bytes a lane); _l2: with an
              L2 prefetch hint of 256 bytes on those loads
  linear      a grid-stride read of the whole buffer, U loads in flight per thread, 8 blocks per multiprocessor
A pattern that streams near the copy rate here but not in the kernel says the kernel's time is in its arithmetic
and latency structure; one that streams slowly here says the access pattern itself is the limit.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch
import torch.nn.functional as F

log = logging.getLogger("stream_probe")

SOURCE = r"""
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}
__device__ __forceinline__ unsigned mix(uint4 v, int work) {
  unsigned a = v.x, b = v.y, c = v.z, d = v.w;
  for (int i = 0; i < work; ++i) {  // four independent chains, two integer ops each per step
    a = a * 2654435761u + (b >> 7); b = b * 2246822519u + (c >> 5);
    c = c * 3266489917u + (d >> 3); d = d * 668265263u + (a >> 11);
  }
  return a ^ b ^ c ^ d;
}
__device__ __forceinline__ unsigned ld_meta(const unsigned* p, int hint) {
  unsigned r;
  if (hint) asm volatile("ld.global.nc.L2::256B.u32 %0, [%1];\n" : "=r"(r) : "l"(p));
  else asm volatile("ld.global.nc.u32 %0, [%1];\n" : "=r"(r) : "l"(p));
  return r;
}
// META 0: weights only; 1: also each chunk's scales as the kernel loads them (4 bytes a lane, group size 128,
// layout [tile][group][8][2 x 16 bit]); 2: the same with an L2 prefetch hint of 256 bytes.
template <int U, int WORK, bool WK, int META>
__global__ void __launch_bounds__(128) probe_tiles(const uint4* __restrict__ w, unsigned* out, int n_tiles,
                                                  int chunks, int cps, const unsigned* __restrict__ meta) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int tile = WK ? blockIdx.y : blockIdx.y * 4 + warp;
  const int c0 = blockIdx.z * cps, c1 = min(chunks, c0 + cps);
  const int first = WK ? c0 + warp * U : c0, step = WK ? 4 * U : U;
  const uint4* wt = w + (size_t)tile * chunks * 32 + lane;
  unsigned acc = 0;
  if (tile < n_tiles) {
    for (int c = first; c < c1; c += step) {
      uint4 v[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (c + u < c1) v[u] = ld_stream(wt + (size_t)(c + u) * 32);
      unsigned m[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (META && c + u < c1) m[u] = ld_meta(meta + ((size_t)tile * (chunks / 2) + (c + u) / 2) * 8 + lane / 4, META == 2);
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (c + u < c1) acc += (WORK ? mix(v[u], WORK) : (v[u].x ^ v[u].y ^ v[u].z ^ v[u].w)) + (META ? m[u] : 0u);
    }
  }
  if (acc == 0x9e3779b9u) out[blockIdx.x] = acc;  // (never, in practice) keeps the loads
}
template <int U>
__global__ void __launch_bounds__(128) probe_linear(const uint4* __restrict__ w, unsigned* out, long long n16) {
  unsigned acc = 0;
  const long long stride = (long long)gridDim.x * 128 * U;
  for (long long i = (long long)blockIdx.x * 128 * U + threadIdx.x; i < n16; i += stride) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (i + u * 128 < n16) v[u] = ld_stream(w + i + u * 128);
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (i + u * 128 < n16) acc += v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  if (acc == 0x9e3779b9u) out[blockIdx.x] = acc;
}
"""

# (name, instance): probe_tiles<U, work steps, warps share a tile>; work 11: about 92 instructions per chunk, as the
# real kernel's dequantization and MMAs at M = 1
TILE_VARIANTS = (("tiles", "probe_tiles<4, 0, false, 0>"), ("tiles_u8", "probe_tiles<8, 0, false, 0>"),
                 ("tiles_wk", "probe_tiles<4, 0, true, 0>"), ("tiles_work", "probe_tiles<4, 11, false, 0>"),
                 ("tiles_wk_work", "probe_tiles<4, 11, true, 0>"), ("tiles_meta", "probe_tiles<4, 11, false, 1>"),
                 ("tiles_meta_l2", "probe_tiles<4, 11, false, 2>"))
LINEAR_VARIANTS = (("linear", "probe_linear<4>"), ("linear_u8", "probe_linear<8>"))


def main(argv=None) -> int:
    import cupy as cp

    from kernel_bench import copy_bandwidth, time_call, write_json  # bench/ is this script's directory: same timing

    from quantkit.kernels import kernel_available, ops, prepare, testing, w4a16_linear

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--shapes", default="28672x8192;4096x4096;14336x4096;4096x14336")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    device = torch.device("cuda", torch.cuda.current_device())
    module = cp.RawModule(code=SOURCE, options=("-std=c++17",),
                          name_expressions=[t for _, t in TILE_VARIANTS + LINEAR_VARIANTS])
    sms = torch.cuda.get_device_properties(device).multi_processor_count

    def torch_stream():  # CuPy launches on torch's current stream (the one a CUDA graph is capturing, in capture)
        return cp.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)

    flush = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    sink = torch.zeros(1 << 16, dtype=torch.int32, device=device)
    copy_bw = copy_bandwidth(device)  # as bench/kernel_bench.py measures it
    result = {"command": "python3 bench/stream_probe.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "device": torch.cuda.get_device_name(device), "torch": torch.__version__, "copy_bandwidth_Bps": copy_bw,
              "timing": "one launch replayed from a CUDA graph after a 256 MB L2 flush, CUDA events, median; bw_frac "
                        "against the copy rate of bench/kernel_bench.py",
              "kernel": kernel_available()[0], "shapes": []}
    log.info("%s: copy %.2f TB/s (read + write)", result["device"], copy_bw / 1e12)
    for shape in args.shapes.split(";"):
        n, k = (int(v) for v in shape.split("x"))
        ql = testing.random_qlinear(n, k, group_size=128, sym=True, act_order=False, dtype=torch.bfloat16, seed=1,
                                    device=device)
        packed = prepare(ql, device=device, layouts=("mma",), keep_reference=False)
        w = packed.mma_weight
        nbytes = w.numel() * 4
        chunks, n_tiles = k // 64, n // 16
        wc, sc = cp.asarray(w.view(-1)), cp.asarray(sink)
        mc = cp.asarray(packed.mma_meta(torch.bfloat16).view(torch.int32).reshape(-1))  # [N/16, K/128, 8] words
        row = {"N": n, "K": k, "weight_bytes": nbytes, "patterns": {}}
        for wk in (False, True):
            splits = ops.mma_splits(1, n, k, sms, staged=False, mt=1, wk=wk)
            cps = -(-chunks // splits)
            for name, tmpl in TILE_VARIANTS:
                if ("_wk" in name) != wk:
                    continue
                kern = module.get_function(tmpl)
                grid = (1, n_tiles if wk else -(-n_tiles // 4), -(-chunks // cps))

                def launch(kern=kern, grid=grid):
                    with torch_stream():
                        kern(grid, (128,), (wc, sc, cp.int32(n_tiles), cp.int32(chunks), cp.int32(cps), mc))
                row["patterns"][name] = {**time_call(launch, flush, args.reps), "splits": splits}
        for name, tmpl in LINEAR_VARIANTS:
            kern = module.get_function(tmpl)

            def launch(kern=kern):
                with torch_stream():
                    kern((8 * sms,), (128,), (wc, sc, cp.int64(nbytes // 16)))
            row["patterns"][name] = time_call(launch, flush, args.reps)
        x = testing.random_activations(1, k, dtype=torch.bfloat16, seed=2, device=device)
        if result["kernel"]:
            row["patterns"]["kernel_m1"] = time_call(lambda: w4a16_linear(x, packed, backend="mma"), flush, args.reps)
            row["patterns"]["kernel_m1_wk"] = time_call(lambda: w4a16_linear(x, packed, backend="mma", wk=True),
                                                          flush, args.reps)
        weight = torch.randn(n, k, dtype=torch.bfloat16, device=device)
        row["patterns"]["cublas_bf16_m1"] = time_call(lambda: F.linear(x, weight), flush, args.reps)
        row["patterns"]["cublas_bf16_m1"]["bytes"] = n * k * 2
        for name, t in row["patterns"].items():
            t["bw_frac"] = t.get("bytes", nbytes) / (t["us"] * 1e-6) / copy_bw
        log.info("%dx%d (%.1f MB): %s", n, k, nbytes / 1e6,
                 ", ".join(f"{name} {t['us']:.1f} us {100 * t['bw_frac']:.0f}%" for name, t in row["patterns"].items()))
        result["shapes"].append(row)
        del weight, packed, w
        torch.cuda.empty_cache()
    write_json(args.out, result)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
