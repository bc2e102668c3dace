"""GGUF's 4-bit blocks (docs/formats.md §3) built from a QuantizedLinear's codes, scales and zeros, and back.

A block covers 32 consecutive inputs k of one output row n (GGUF's ne0 is K). Byte layouts, little-endian:

  Q4_0  18 bytes  d: fp16 | qs: 16 bytes      x = d * (q - 8)
  Q4_1  20 bytes  d: fp16 | m: fp16 | qs: 16  x = d * q + m
  qs[j] = q[j] | q[j + 16] << 4, j = 0..15

A GPTQ group g covers blocks b with b * 32 // group_size == g, so a group of 64 or 128 repeats its scale over 2 or 4
blocks. Symmetric 4-bit (zero 8 everywhere) is Q4_0 with d = scale, exactly. Asymmetric is Q4_1 with d = scale and
m = -scale * zero. GGUF stores d and m in fp16: a scale converts exactly when it is an fp16 value (fp16 checkpoints,
and bf16 ones within fp16's normal range); otherwise it is rounded to the nearest fp16, which moves a weight by at
most 2**-11 of its scale. m = -scale * zero needs up to 15 significant bits and so is rounded to fp16 the same way.
Anything worse (overflow, or a scale so small that fp16 keeps less than its full precision) raises ValueError.

All functions are pure and work on numpy arrays; torch tensors are accepted as inputs.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32
Q4_0_BYTES = 18
Q4_1_BYTES = 20
FP16_HALF_ULP = 2.0**-11  # largest relative rounding error of a normal fp16 value


def _np(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    import torch

    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bfloat16:
            x = x.float()  # bf16 -> fp32 is exact
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_fp16(values, *, what: str = "scale") -> tuple[np.ndarray, float]:
    """Round float values to fp16; return them with the largest relative error (0.0 when exact).

    Raises ValueError when fp16 cannot hold a value to within its normal rounding (overflow, underflow, subnormal).
    """
    v = _np(values).astype(np.float64)
    with np.errstate(over="ignore"):
        h = v.astype(np.float16)
    err = np.abs(h.astype(np.float64) - v)
    bad = ~np.isfinite(h) | (err > FP16_HALF_ULP * np.abs(v))
    if bad.any():
        i = np.unravel_index(int(np.argmax(bad)), bad.shape)
        raise ValueError(
            f"{what} {float(v[i]):.6g} at {tuple(int(j) for j in i)} does not fit fp16 "
            f"(overflow or below fp16's normal range); GGUF blocks store it in fp16"
        )
    nz = v != 0
    rel = float((err[nz] / np.abs(v[nz])).max()) if nz.any() else 0.0
    return h, rel


def _block_params(per_group: np.ndarray, k: int, group_size: int) -> np.ndarray:
    """[G, N] per-group values -> [N, K/32] per-block values (a group repeats over its blocks)."""
    if group_size % BLOCK:
        raise ValueError(f"group size {group_size} is not a multiple of {BLOCK}; GGUF blocks cannot express it")
    if k % BLOCK:
        raise ValueError(f"K={k} is not a multiple of {BLOCK}; GGUF blocks cannot express it")
    group_of_block = (np.arange(k // BLOCK) * BLOCK) // group_size
    return np.ascontiguousarray(per_group[group_of_block].T)


def _pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """uint8 [N, K] codes 0..15 -> uint8 [N, K/32, 16] qs."""
    n, k = codes.shape
    c = codes.reshape(n, k // BLOCK, BLOCK)
    return (c[..., :16] | (c[..., 16:] << 4)).astype(np.uint8)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """uint8 [N, nb, 16] -> uint8 [N, nb*32] codes."""
    n, nb, _ = qs.shape
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(n, nb * BLOCK)


def _check_codes(codes: np.ndarray) -> np.ndarray:
    c = _np(codes)
    if c.ndim != 2:
        raise ValueError(f"codes must be [N, K], got shape {c.shape}")
    if c.size and int(c.max()) > 15:
        raise ValueError(f"codes must be 4-bit (0..15), found {int(c.max())}")
    return c.astype(np.uint8)


def pack_q4_0(codes, d) -> np.ndarray:
    """codes uint8 [N, K], d fp16 [N, K/32] -> Q4_0 bytes uint8 [N, K/32 * 18]."""
    c = _check_codes(codes)
    n = c.shape[0]
    out = np.empty((n, c.shape[1] // BLOCK, Q4_0_BYTES), dtype=np.uint8)
    out[..., 0:2] = np.asarray(d, dtype="<f2").reshape(n, -1, 1).view(np.uint8)
    out[..., 2:] = _pack_nibbles(c)
    return out.reshape(n, -1)


def decode_q4_0(blocks) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 bytes uint8 [N, nb * 18] -> (codes uint8 [N, nb*32], d fp16 [N, nb]); the inverse of pack_q4_0."""
    b = _np(blocks)
    n = b.shape[0]
    b = b.reshape(n, -1, Q4_0_BYTES)
    d = np.ascontiguousarray(b[..., 0:2]).view("<f2").reshape(n, -1).astype(np.float16)
    return _unpack_nibbles(b[..., 2:]), d


def pack_q4_1(codes, d, m) -> np.ndarray:
    """codes uint8 [N, K], d and m fp16 [N, K/32] -> Q4_1 bytes uint8 [N, K/32 * 20]."""
    c = _check_codes(codes)
    n = c.shape[0]
    out = np.empty((n, c.shape[1] // BLOCK, Q4_1_BYTES), dtype=np.uint8)
    out[..., 0:2] = np.asarray(d, dtype="<f2").reshape(n, -1, 1).view(np.uint8)
    out[..., 2:4] = np.asarray(m, dtype="<f2").reshape(n, -1, 1).view(np.uint8)
    out[..., 4:] = _pack_nibbles(c)
    return out.reshape(n, -1)


def decode_q4_1(blocks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1 bytes uint8 [N, nb * 20] -> (codes uint8 [N, nb*32], d fp16 [N, nb], m fp16 [N, nb]); inverse of pack_q4_1."""
    b = _np(blocks)
    n = b.shape[0]
    b = b.reshape(n, -1, Q4_1_BYTES)
    d = np.ascontiguousarray(b[..., 0:2]).view("<f2").reshape(n, -1).astype(np.float16)
    m = np.ascontiguousarray(b[..., 2:4]).view("<f2").reshape(n, -1).astype(np.float16)
    return _unpack_nibbles(b[..., 4:]), d, m


def encode_q4_0(codes, scales, *, group_size: int) -> np.ndarray:
    """Symmetric 4-bit (zero 8) -> Q4_0 bytes, uint8 [N, K/32 * 18], d = the group's scale. ``scales`` is [G, N]."""
    c = _check_codes(codes)
    d, _ = to_fp16(_block_params(_np(scales), c.shape[1], group_size))
    return pack_q4_0(c, d)


def encode_q4_1(codes, scales, zeros, *, group_size: int) -> np.ndarray:
    """Asymmetric 4-bit -> Q4_1 bytes, uint8 [N, K/32 * 20], with d = scale and m = -scale * zero (fp16)."""
    c = _check_codes(codes)
    k = c.shape[1]
    s = _np(scales).astype(np.float64)
    d, _ = to_fp16(_block_params(s, k, group_size))
    m, _ = to_fp16(_block_params(-s * _np(zeros).astype(np.float64), k, group_size), what="minimum (-scale*zero)")
    return pack_q4_1(c, d, m)


def group_params(per_block: np.ndarray, *, group_size: int) -> np.ndarray:
    """[N, K/32] per-block values -> [G, N] per-group values; raises if a group's blocks disagree."""
    n, nb = per_block.shape
    if group_size % BLOCK or (nb * BLOCK) % group_size:
        raise ValueError(f"group size {group_size} does not tile K={nb * BLOCK} in {BLOCK}-blocks")
    per = group_size // BLOCK
    g = per_block.reshape(n, nb // per, per)
    if not (g == g[..., :1]).all():
        raise ValueError(f"blocks inside a group of {group_size} carry different parameters")
    return np.ascontiguousarray(g[..., 0].T)
