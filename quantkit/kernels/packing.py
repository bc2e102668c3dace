"""Load-time repack: GPTQ checkpoint tensors (docs/formats.md §1) -> the layouts the kernels in csrc/ read.

Two device layouts, both built from the unpacked codes of quantkit.formats.gptq.unpack:

- "mma" (NVIDIA, csrc/w4a16_mma_cuda.h): weight int32 [N/16, K/64, 32, 4], one 16-byte word group per lane
  holding its tensor-core A fragments for 64 k; meta [N/16, G, 8, 2|4] holding each lane's two rows' scales
  (and magic + zero when asymmetric) in the activation dtype.
- "dot2" (RDNA3, csrc/w4a16_dot2.h and csrc/w4a16_wmma.h): the GPTQ qweight [K/8, N] with the exllama
  shuffle inside each word, scales [G, N] in the activation dtype, zeros uint8 [G, N] (None when symmetric).

Act-order: when g_idx is not k // G, the columns of W are sorted by group (stable) so every kernel sees static
groups, and ``perm`` gathers x to match (x[..., perm]). The GPTQ tensors themselves are kept for the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from quantkit.errors import InputError, UnsupportedError
from quantkit.formats import gptq
from quantkit.qlinear import QuantizedLinear

MAGIC_BIAS = {torch.float16: 1024.0, torch.bfloat16: 128.0}
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


def _words(values: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Sum of values << shifts over the trailing dims that ``shifts`` covers, as int32 with the same bits."""
    dims = tuple(range(values.dim() - shifts.dim(), values.dim()))
    w = (values.to(torch.int64) << shifts.to(values.device)).sum(dim=dims)
    return torch.where(w >= 2**31, w - 2**32, w).to(torch.int32)


def repack_mma(codes: torch.Tensor) -> torch.Tensor:
    """codes uint8 [N, K] (already act-order sorted) -> int32 [N/16, K/64, 32, 4] (see csrc/w4a16_mma_cuda.h)."""
    n, k = codes.shape
    # row = 16t + 8*rh + gid; k = 64c + 16*tig + 4*j + 2*h + e
    v = codes.reshape(n // 16, 2, 8, k // 64, 4, 4, 2, 2)  # t rh gid c tig j h e
    v = v.permute(0, 3, 2, 4, 5, 1, 6, 7)  # t c gid tig j rh h e
    rh, h, e = torch.meshgrid(torch.arange(2), torch.arange(2), torch.arange(2), indexing="ij")
    shifts = 4 * (rh + 2 * h) + 16 * e  # register i = rh + 2h; second element 16 bits up
    return _words(v, shifts).reshape(n // 16, k // 64, 32, 4).contiguous()


def unpack_mma(words: torch.Tensor) -> torch.Tensor:
    """Inverse of repack_mma: int32 [N/16, K/64, 32, 4] -> codes uint8 [N, K]."""
    tiles, chunks = words.shape[:2]
    rh, h, e = torch.meshgrid(torch.arange(2), torch.arange(2), torch.arange(2), indexing="ij")
    shifts = (4 * (rh + 2 * h) + 16 * e).to(words.device)
    w = (words.to(torch.int64) & 0xFFFFFFFF).reshape(tiles, chunks, 8, 4, 4, 1, 1, 1)  # t c gid tig j
    v = (w >> shifts) & 0xF  # t c gid tig j rh h e
    return v.permute(0, 5, 2, 1, 3, 4, 6, 7).reshape(tiles * 16, chunks * 64).to(torch.uint8)


def repack_mma_meta(scales: torch.Tensor, zeros: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """scales [G, N] (+ true zeros [G, N] when asymmetric) -> [N/16, G, 8, 2 or 4] in ``dtype``."""
    g, n = scales.shape

    def lanes(t: torch.Tensor) -> torch.Tensor:  # [G, N] -> [N/16, G, 8 (gid), 2 (rh)]
        return t.reshape(g, n // 16, 2, 8).permute(1, 0, 3, 2)

    parts = [lanes(scales.to(dtype))]
    if zeros is not None:
        parts.append(lanes((zeros.float() + MAGIC_BIAS[dtype]).to(dtype)))
    return torch.cat(parts, dim=-1).contiguous()


def repack_dot2(codes: torch.Tensor) -> torch.Tensor:
    """codes uint8 [N, K] -> exllama-shuffled qweight int32 [K/8, N]: q0 q2 q4 q6 low, q1 q3 q5 q7 high."""
    n, k = codes.shape
    v = codes.T.reshape(k // 8, 4, 2, n).permute(0, 3, 1, 2)  # i n p e, k = 8i + 2p + e
    p, e = torch.meshgrid(torch.arange(4), torch.arange(2), indexing="ij")
    return _words(v, 4 * p + 16 * e).contiguous()


def mma_chunk_order(t: torch.Tensor) -> torch.Tensor:
    """t [..., K] (K a multiple of 64) with each 64-k chunk in the MMA's logical k order, the order the "mma" layout's
    dequantized A fragments hold their weights in: logical position (chunk, j, h, tig, e) <- k = 64 chunk + 16 tig +
    4 j + 2 h + e (csrc/w4a16_mma_cuda.h). Reshapes and a permute only, so that torch.compile can fuse it."""
    k = t.shape[-1]
    return t.reshape(-1, k // 64, 4, 4, 2, 2).permute(0, 1, 3, 4, 2, 5).reshape(t.shape)


@dataclass(eq=False)
class PackedLinear:
    """One quantized linear, repacked for the kernels, plus the GPTQ tensors the reference path reads."""

    out_features: int
    in_features: int
    group_size: int
    sym: bool  # the layer was quantized symmetrically (zero 8 everywhere)
    dtype: torch.dtype  # the scales' dtype, i.e. the model's
    device: torch.device
    checkpoint: dict[str, torch.Tensor] | None  # CPU qweight, qzeros, scales, g_idx (format v2: the true zeros)
    perm: torch.Tensor | None  # int64 [K]; the kernels compute with x[..., perm]
    kernel_reason: str  # "" when the kernels can take this layer, else why not
    mma_weight: torch.Tensor | None = None
    dot2_qweight: torch.Tensor | None = None
    zeros: torch.Tensor | None = None  # uint8 [G, N] true zeros, None when symmetric
    scales: torch.Tensor | None = None  # [G, N] in ``dtype``
    _per_dtype: dict = field(default_factory=dict, repr=False)

    @property
    def bits(self) -> int:
        return 4

    def mma_meta(self, dtype: torch.dtype) -> torch.Tensor:
        key = ("mma", dtype)
        if key not in self._per_dtype:
            self._per_dtype[key] = repack_mma_meta(self.scales, self.zeros, dtype)
        return self._per_dtype[key]

    def wgmma_x_index(self) -> torch.Tensor:
        """int64 [K]: x[..., index] is x in the act-order sort and, inside each 64-k chunk, in the MMA's logical k
        order (csrc/w4a16_wgmma_cuda.h), so the wgmma kernel copies x to shared memory as it is."""
        if "wgmma_index" not in self._per_dtype:
            order = mma_chunk_order(torch.arange(self.in_features, device=self.device))
            self._per_dtype["wgmma_index"] = self.perm[order] if self.perm is not None else order
        return self._per_dtype["wgmma_index"]

    def wgmma_x_pack_index(self) -> tuple[torch.Tensor, bool]:
        """(int32 index, words) for the warp-specialized kernel's packing of x (the extension's wgmma_pack_x), the order
        of wgmma_x_index: where each pair of k in it is a 32-bit word of x's row (k(2i + 1) = k(2i) + 1, k(2i) even:
        always without act-order) the [K / 2] words, words True; else the [K] k themselves."""
        if "wgmma_pack_index" not in self._per_dtype:
            pairs = self.wgmma_x_index().reshape(-1, 2)
            words = bool(((pairs[:, 0] % 2 == 0) & (pairs[:, 1] == pairs[:, 0] + 1)).all())
            index = pairs[:, 0] // 2 if words else pairs.reshape(-1)
            self._per_dtype["wgmma_pack_index"] = (index.to(torch.int32).contiguous(), words)
        return self._per_dtype["wgmma_pack_index"]

    def dot2_scales(self, dtype: torch.dtype) -> torch.Tensor:
        key = ("dot2", dtype)
        if key not in self._per_dtype:
            self._per_dtype[key] = self.scales.to(dtype).contiguous()
        return self._per_dtype[key]

    def reference_qlinear(self) -> QuantizedLinear:
        """The layer as QuantizedLinear, read back from its GPTQ tensors by quantkit.formats.gptq.unpack."""
        if self.checkpoint is None:
            raise UnsupportedError("this PackedLinear was prepared with keep_reference=False; prepare it again to use the reference path")
        if "ref" not in self._per_dtype:  # unpacked once (on the CPU, where gptq.unpack runs), then kept on the device
            ql = gptq.unpack(
                self.checkpoint.__getitem__, bits=4, group_size=self.group_size, sym=self.sym, checkpoint_format="gptq_v2"
            )
            self._per_dtype["ref"] = QuantizedLinear(
                codes=ql.codes.to(self.device), scales=ql.scales.to(self.device), zeros=ql.zeros.to(self.device),
                g_idx=ql.g_idx.to(self.device), bits=ql.bits, group_size=ql.group_size, sym=ql.sym,
            )
        return self._per_dtype["ref"]


def _kernel_reason(n: int, k: int, group_size: int, bits: int) -> str:
    if bits != 4:
        return f"the kernels take 4-bit weights, this layer has {bits}"
    if n % 16:
        return f"the kernels need N % 16 == 0, N is {n}"
    if k % 64:
        return f"the kernels need K % 64 == 0, K is {k}"
    if group_size != 32 and group_size % 64:
        return f"the kernels need a group size of 32 or a multiple of 64, it is {group_size}"
    return ""


def _sort_groups(ql: QuantizedLinear) -> tuple[torch.Tensor | None, str]:
    """The act-order permutation that makes groups static (None if already), and why the kernels cannot if not."""
    k, g = ql.in_features, ql.group_size
    g_idx = ql.g_idx.to(torch.int64).cpu()
    static = torch.arange(k, dtype=torch.int64) // g
    if torch.equal(g_idx, static):
        return None, ""
    perm = torch.argsort(g_idx, stable=True)
    if not torch.equal(g_idx[perm], static):
        return None, "g_idx does not give every group exactly group_size inputs; only the reference path takes it"
    return perm, ""


def prepare(
    ql: QuantizedLinear,
    *,
    device: torch.device | str,
    layouts: tuple[str, ...] | None = None,
    keep_reference: bool = True,
) -> PackedLinear:
    """Repack one QuantizedLinear for the kernels on ``device``.

    layouts: which device layouts to build ("mma" for NVIDIA, "dot2" for RDNA3; default: the one this build of
    torch runs). keep_reference: keep the GPTQ tensors (on the CPU) for backend="reference".
    """
    device = torch.device(device)
    if ql.scales.dtype not in SUPPORTED_DTYPES:
        raise InputError(f"scales are {ql.scales.dtype}; the kernels take float16 or bfloat16 scales (cast them first)")
    if layouts is None:
        layouts = ("dot2",) if torch.version.hip else ("mma",)
    unknown = set(layouts) - {"mma", "dot2"}
    if unknown:
        raise InputError(f"unknown kernel layout(s) {sorted(unknown)}; use 'mma' and/or 'dot2'")
    n, k = ql.out_features, ql.in_features
    perm, reason = _sort_groups(ql)
    reason = reason or _kernel_reason(n, k, ql.group_size, ql.bits)
    checkpoint = None
    if keep_reference:  # the GPTQ tensors, on the CPU (quantkit.formats.gptq packs and unpacks there)
        cpu = QuantizedLinear(codes=ql.codes.cpu(), scales=ql.scales.cpu(), zeros=ql.zeros.cpu(), g_idx=ql.g_idx.cpu(),
                              bits=ql.bits, group_size=ql.group_size, sym=ql.sym)
        checkpoint = gptq.pack(cpu, checkpoint_format="gptq_v2")
    sym = bool(torch.all(ql.zeros == 8))
    out = PackedLinear(
        out_features=n, in_features=k, group_size=ql.group_size, sym=ql.sym, dtype=ql.scales.dtype, device=device,
        checkpoint=checkpoint, perm=None if perm is None else perm.to(device), kernel_reason=reason,
    )
    if reason:
        return out
    codes = ql.codes.to(device)
    if perm is not None:
        codes = codes[:, perm.to(device)]
    out.scales = ql.scales.to(device).contiguous()
    out.zeros = None if sym else ql.zeros.to(device).contiguous()
    if "mma" in layouts:
        out.mma_weight = repack_mma(codes)
    if "dot2" in layouts:
        out.dot2_qweight = repack_dot2(codes)
    return out


def concat(parts: list[PackedLinear]) -> PackedLinear:
    """One layer that computes several layers of the same input at once: their output features one after the other
    (W's rows stacked), e.g. the q, k and v projections of an attention block. Every layout the parts have is
    concatenated as it is (the layouts keep output rows independent); the parts must share K, the group size, the
    dtype, the device and the act-order permutation."""
    if not parts:
        raise InputError("concat needs at least one layer")
    first = parts[0]
    for i, p in enumerate(parts):
        if p.kernel_reason:
            raise UnsupportedError(f"layer {i} of the concatenation cannot run on the kernels: {p.kernel_reason}")
        same = (p.in_features, p.group_size, p.dtype, p.device) == (first.in_features, first.group_size, first.dtype,
                                                                    first.device)
        same_perm = (p.perm is None) == (first.perm is None) and (p.perm is None or torch.equal(p.perm, first.perm))
        if not same or not same_perm:
            raise InputError(f"layer {i} of the concatenation differs from layer 0 in K, group size, dtype, device or "
                             "act-order permutation; only layers of the same input quantized alike concatenate")
    n = sum(p.out_features for p in parts)
    out = PackedLinear(out_features=n, in_features=first.in_features, group_size=first.group_size,
                       sym=all(p.sym for p in parts), dtype=first.dtype, device=first.device, checkpoint=None,
                       perm=first.perm, kernel_reason="")
    out.scales = torch.cat([p.scales for p in parts], dim=1)
    if any(p.zeros is not None for p in parts):  # a symmetric part's zeros are 8
        out.zeros = torch.cat([p.zeros if p.zeros is not None else torch.full_like(p.scales, 8, dtype=torch.uint8)
                               for p in parts], dim=1)
    if all(p.mma_weight is not None for p in parts):
        out.mma_weight = torch.cat([p.mma_weight for p in parts], dim=0)
    if all(p.dot2_qweight is not None for p in parts):
        out.dot2_qweight = torch.cat([p.dot2_qweight for p in parts], dim=1)
    if all(p.checkpoint is not None for p in parts):  # GPTQ tensors: output columns last (qzeros: 8 per word)
        out.checkpoint = {key: torch.cat([p.checkpoint[key] for p in parts], dim=1)
                          for key in ("qweight", "qzeros", "scales")}
        out.checkpoint["g_idx"] = first.checkpoint["g_idx"]
    return out


def permute_rows(packed: PackedLinear, order: torch.Tensor) -> PackedLinear:
    """The same layer with its output features in ``order`` (row i of the result is row order[i]), in every layout it
    has: the kernels' (the "mma" weight's rows unpacked and repacked), the scales and zeros, and the GPTQ tensors."""
    n = packed.out_features
    order = order.to(torch.int64).cpu()
    if order.shape != (n,) or not torch.equal(order.sort().values, torch.arange(n)):
        raise InputError(f"order must be a permutation of the layer's {n} output features")
    if packed.kernel_reason:
        raise UnsupportedError(f"cannot reorder a layer the kernels cannot take: {packed.kernel_reason}")
    out = PackedLinear(out_features=n, in_features=packed.in_features, group_size=packed.group_size, sym=packed.sym,
                       dtype=packed.dtype, device=packed.device, checkpoint=None, perm=packed.perm, kernel_reason="")
    dev = order.to(packed.device)
    out.scales = packed.scales[:, dev].contiguous()
    out.zeros = None if packed.zeros is None else packed.zeros[:, dev].contiguous()
    if packed.mma_weight is not None:
        out.mma_weight = repack_mma(unpack_mma(packed.mma_weight)[dev])
    if packed.dot2_qweight is not None:
        out.dot2_qweight = packed.dot2_qweight[:, dev].contiguous()
    if packed.checkpoint is not None:  # GPTQ tensors: output columns last (qzeros: 8 per word)
        ck = packed.checkpoint
        out.checkpoint = {key: ck[key][:, order].contiguous() for key in ("qweight", "scales")}
        out.checkpoint["qzeros"] = gptq.pack_cols(gptq.unpack_cols(ck["qzeros"], 4, n)[:, order], 4)
        out.checkpoint["g_idx"] = ck["g_idx"]
    return out


def glu_order(intermediate: int) -> torch.Tensor:
    """The row order of a gated pair [gate; up] (each ``intermediate`` rows) for the kernels' SiLU-and-multiply
    epilogue: each 16-row tile holds 8 gate rows and then the up rows of the same 8 features, so that one thread
    holds both sums of a feature (the MMA's rows gid and gid + 8). The output feature j of the pair is gate row j."""
    if intermediate % 8:
        raise InputError(f"a gated pair interleaves by 8 rows; its {intermediate} features are not a multiple of 8")
    rows = torch.arange(intermediate).view(-1, 8)
    return torch.stack([rows, rows + intermediate], dim=1).reshape(-1)


def interleave_glu(gate: PackedLinear, up: PackedLinear) -> PackedLinear:
    """gate and up (the same shape) as one layer in glu_order: kernels.ops.w4a16_linear(..., glu=True) computes
    silu(gate(x)) * up(x) from it."""
    if gate.out_features != up.out_features:
        raise InputError(f"gate has {gate.out_features} output features, up {up.out_features}; a gated pair needs the same")
    return permute_rows(concat([gate, up]), glu_order(gate.out_features))


def rope_order(heads: int, kv_heads: int, head_dim: int) -> torch.Tensor:
    """The row order of a fused [q; k; v] projection (heads, kv_heads and kv_heads heads of head_dim rows) for the
    decode kernel's rotary epilogue (kernels.ops.w4a16_rope_qkv): in every q and k head, each 16-row tile holds 8
    dims of the head's first half and then the same 8 of its second half (d and d + head_dim / 2, the rotary
    embedding's pairs: one thread's MMA rows gid and gid + 8), as glu_order pairs a gated pair's halves; v's rows as
    they are."""
    if head_dim % 16 or head_dim <= 0:
        raise InputError(f"the rotary epilogue pairs dims by 8 of each half: head_dim must be a multiple of 16, got "
                         f"{head_dim}")
    rotated = (torch.arange(heads + kv_heads)[:, None] * head_dim + glu_order(head_dim // 2)).reshape(-1)
    return torch.cat([rotated, torch.arange((heads + kv_heads) * head_dim, (heads + 2 * kv_heads) * head_dim)])


def interleave_rope(parts: list[PackedLinear], heads: int, kv_heads: int, head_dim: int) -> PackedLinear:
    """q, k and v projections of one input as one layer in rope_order."""
    q, k, v = parts
    if (q.out_features, k.out_features, v.out_features) != (heads * head_dim, kv_heads * head_dim,
                                                            kv_heads * head_dim):
        raise InputError(f"q, k and v have {q.out_features}, {k.out_features} and {v.out_features} output features, "
                         f"not {heads}, {kv_heads} and {kv_heads} heads of {head_dim}")
    return permute_rows(concat(parts), rope_order(heads, kv_heads, head_dim))


def prepare_from_checkpoint(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor | None,
    *,
    bits: int,
    group_size: int,
    sym: bool,
    checkpoint_format: str = "gptq",
    device: torch.device | str,
    layouts: tuple[str, ...] | None = None,
    keep_reference: bool = True,
) -> PackedLinear:
    """Repack one layer straight from its GPTQ tensors (docs/formats.md §1), as a loader reads them."""
    if bits != 4:
        raise UnsupportedError(f"qweight holds {bits}-bit codes; the W4A16 kernels take 4-bit GPTQ only")
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise InputError(f"qweight/qzeros must be int32, got {qweight.dtype}/{qzeros.dtype}")
    if group_size <= 0:
        group_size = qweight.shape[0] * 8  # channel-wise: one group spans K
    tensors = {"qweight": qweight.cpu(), "qzeros": qzeros.cpu(), "scales": scales.cpu()}
    if g_idx is not None:
        tensors["g_idx"] = g_idx.cpu()
    ql = gptq.unpack(
        tensors.__getitem__, bits=bits, group_size=group_size, sym=sym, checkpoint_format=checkpoint_format
    )
    return prepare(ql, device=device, layouts=layouts, keep_reference=keep_reference)
