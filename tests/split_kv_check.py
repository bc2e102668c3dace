"""The split-KV decoding attention's check against SDPA (quantkit.eval.decode_attention), shared by the CPU test
through Triton's interpreter (tests/test_eval.py) and the GPU test (tests/test_eval_gpu.py)."""

from __future__ import annotations

import torch

# (batch, query heads, KV heads, cache positions, head size, positions that attend per sequence): ranges that keep
# nothing (the first; the fourth, a cache mostly beyond the sequences, whole ranges), a cache not a whole number of
# blocks, Llama-3-8B's decode shapes, no grouping (the third); groups of 8 (the fifth: the fused combine reads its 20
# ranges in two tiles, the second holding 88 attending positions and a range that keeps nothing); the last two cut
# each sequence's cache up to its last attending position (ranges of two blocks), the very last as one range a pair
SPLIT_KV_CASES = ((2, 8, 2, 200, 64, (66, 199)), (1, 32, 8, 640, 128, (513,)), (3, 4, 4, 70, 32, (5, 70, 33)),
                  (2, 4, 1, 1000, 32, (40, 333)), (1, 64, 8, 640, 128, (600,)), (4, 4, 2, 1500, 32, (40, 333, 1499, 700)),
                  (34, 16, 8, 40, 16, tuple(range(7, 41))))


def check_split_kv_decode(device: str, dtype: torch.dtype, fused_combine: bool | None = None) -> None:
    """quantkit.eval.decode_attention against SDPA in fp32 on the same inputs, every case of SPLIT_KV_CASES; the op
    through torch.compile (opaque, its fake output shaped alike, dynamic shapes) gives the same bits as called.
    fused_combine: decode_attention.FUSED_COMBINE for the check (None: as it is); with it, the arrival counters are
    left zero after every call."""
    from quantkit.eval import decode_attention

    saved = decode_attention.FUSED_COMBINE
    decode_attention.FUSED_COMBINE = saved if fused_combine is None else fused_combine
    try:
        _check(device, dtype)
    finally:
        decode_attention.FUSED_COMBINE = saved


def _check(device: str, dtype: torch.dtype) -> None:
    from quantkit.eval import decode_attention

    compiled = torch.compile(lambda *a: decode_attention.split_kv_decode(*a) * 1, dynamic=True)
    gen = torch.Generator().manual_seed(7)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device == "cuda" else 132
    bounded = [decode_attention.ends_at_last_kept(decode_attention.plan(b, kv, s, sms)[1])
               for b, _, kv, s, _, _ in SPLIT_KV_CASES]
    assert bounded[-2:] == [True, True] and not any(bounded[:4]), bounded
    for (b, h, kv, s, d, filled), bound in zip(SPLIT_KV_CASES, bounded):
        q = torch.randn(b, h, 1, d, generator=gen).to(device, dtype)
        k, v = (torch.randn(b, kv, s, d, generator=gen).to(device, dtype) for _ in range(2))
        mask = (torch.arange(s + 8)[None, :] < torch.tensor(filled)[:, None]).reshape(b, 1, 1, s + 8).to(device)
        assert decode_attention.supports(q, k, mask)
        got = decode_attention.split_kv_decode(q, k, v, mask, d ** -0.5)
        kr, vr = (t.repeat_interleave(h // kv, dim=1).float() for t in (k, v))
        want = torch.nn.functional.scaled_dot_product_attention(q.float(), kr, vr, attn_mask=mask[..., :s],
                                                                scale=d ** -0.5)
        assert got.shape == q.shape and got.dtype == dtype
        err = ((got.float() - want).norm() / want.norm()).item()
        assert err < 1e-2, (b, h, kv, s, d, err)  # 16-bit inputs and weights of the dot over V: about 3e-3
        assert torch.equal(compiled(q, k, v, mask, d ** -0.5), got)
        if decode_attention.FUSED_COMBINE and decode_attention.plan(b, kv, s, sms)[0] > 1:
            assert not decode_attention.counters(q.device, 0).any(), (b, h, kv, s, d)
        if bound:  # the positions past a sequence's last attending one are never read: NaN there changes no bit
            past = (torch.arange(s)[None, :] >= torch.tensor(filled)[:, None]).to(device)[:, None, :, None]
            k, v = (t.masked_fill(past, float("nan")) for t in (k, v))
            assert torch.equal(decode_attention.split_kv_decode(q, k, v, mask, d ** -0.5), got), (b, h, kv, s, d)
