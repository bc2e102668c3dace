"""The split-KV decoding attention's check against SDPA (quantkit.eval.decode_attention), shared by the CPU test
through Triton's interpreter (tests/test_eval.py) and the GPU test (tests/test_eval_gpu.py)."""

from __future__ import annotations

import contextlib

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


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' rotary embedding (rotate_half) of x [B, heads, 1, D] in fp32, rounded once to x's dtype."""
    half = x.shape[-1] // 2
    xf = x.float()
    turned = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos.float()[:, None] + turned * sin.float()[:, None]).to(x.dtype)


def check_rope_split_kv_decode(device: str, dtype: torch.dtype) -> None:
    """quantkit.eval.decode_attention.rope_split_kv_decode against the rotary embedding in torch, the cache written at
    the position and split_kv_decode after it, every case of SPLIT_KV_CASES at a position inside the first sequence's
    attending ones (for a sequence whose mask keeps less, the step's key and value are written all the same): the
    output within a rounding of split_kv_decode's, the caches alike outside the position and within one rounding of
    the rotated key and the value there; through torch.compile (the caches mutated in place, not copied) the same."""
    from quantkit.eval import decode_attention

    gen = torch.Generator().manual_seed(11)
    compiled = torch.compile(lambda *a: decode_attention.rope_split_kv_decode(*a) * 1, dynamic=True)
    for b, h, kv, s, d, filled in SPLIT_KV_CASES:
        at = filled[0] - 1
        q = torch.randn(b, 1, h, d, generator=gen).to(device, dtype).transpose(1, 2)  # as a projection's view
        k_new, v_new = (torch.randn(b, 1, kv, d, generator=gen).to(device, dtype).transpose(1, 2) for _ in range(2))
        angle = torch.rand(b, 1, d // 2, generator=gen) * 6.3
        cos, sin = (f(torch.cat((angle, angle), -1)).to(device, dtype) for f in (torch.cos, torch.sin))
        k, v = (torch.randn(b, kv, s, d, generator=gen).to(device, dtype) for _ in range(2))
        mask = (torch.arange(s + 8)[None, :] < torch.tensor(filled)[:, None]).reshape(b, 1, 1, s + 8).to(device)
        position = torch.tensor([at], device=device)
        k_want, v_want = k.clone(), v.clone()
        k_want[:, :, at], v_want[:, :, at] = rotary(k_new, cos, sin)[:, :, 0], v_new[:, :, 0]
        want = decode_attention.split_kv_decode(rotary(q, cos, sin), k_want, v_want, mask, d ** -0.5)
        for run in (decode_attention.rope_split_kv_decode, compiled):
            k_got, v_got = k.clone(), v.clone()
            got = run(q, k_new, v_new, cos, sin, k_got, v_got, position, mask, d ** -0.5)
            assert got.shape == (b, h, 1, d) and got.dtype == dtype
            err = ((got.float() - want.float()).norm() / want.float().norm()).item()
            assert err < 2e-3, (b, h, kv, s, d, err)
            others = torch.arange(s, device=device) != at
            assert torch.equal(k_got[:, :, others], k[:, :, others]) and torch.equal(v_got, v_want), (b, h, kv, s, d)
            torch.testing.assert_close(k_got[:, :, at], k_want[:, :, at], rtol=1e-2, atol=1e-2)


def check_rope_in_attention_steps(device: str, dtype: torch.dtype) -> None:
    """quantkit.eval.attention.ROPE_IN_ATTENTION: a tiny Llama's decode steps (q/k/v fused as in the throughput runs,
    the runner's cache writing at its position) through rope_split_kv_decode, eagerly and compiled by inductor, give
    the logits and the caches of transformers' own rotary embedding and cache write with the attention after them
    (the split kernel on a GPU, SDPA on the CPU), one rope launch a layer and step; the forwards restored after."""
    from quantkit.eval import attention, decode_attention, fuse, random_weights, throughput
    from quantkit.reference import QuantLinear

    model, _, _ = random_weights.build("tiny-llama", group_size=32, dtype=dtype, device=device,
                                       module_factory=QuantLinear, progress=False)
    fuse.fuse_projections(model)
    layers = model.config.num_hidden_layers
    settings = throughput.Settings(batches=(2,), prompt_len=8, gen_len=3, cuda_graphs=False)
    prompt = torch.randint(0, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(3)).to(device)
    launches, launch = [], decode_attention._launch

    def counted(*args, rope=None):
        launches.append(rope is not None)
        return launch(*args, rope=rope)

    def run(rope: bool, compiled: bool):
        torch._dynamo.reset()
        attention.ROPE_IN_ATTENTION, launches[:] = rope, []
        with attention.grouped_decode_attention(model, decode_kernel="split"):
            assert sum("forward" in vars(m) for m in model.modules()) == (layers if rope else 0)
            decoder = throughput._compiled(model, "inductor") if compiled else None
            runner = throughput.Runner(model, batch=2, settings=settings, prompt=prompt, decode_model=decoder)
            assert runner.shared_cache_layers == layers
            runner.prepare()
            runner.reset()
            runner.prefill()
            logits = []
            for _ in range(settings.gen_len):
                runner.decode()
                logits.append(runner.decode_logits()[:, -1].float())
        assert not any("forward" in vars(m) for m in model.modules())
        if rope:  # prepare's step and the three decode steps, one launch a layer each
            assert launches.count(True) == (1 + settings.gen_len) * layers, launches
        return torch.stack(logits), [(layer.keys.clone(), layer.values.clone()) for layer in runner.cache.layers]

    saved = attention.ROPE_IN_ATTENTION
    decode_attention._launch = counted
    try:
        with torch.inference_mode():
            want, want_cache = run(False, False)
            for compiled in (False, True):
                got, got_cache = run(True, compiled)
                torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
                for (k, v), (k2, v2) in zip(want_cache, got_cache):
                    torch.testing.assert_close(k2, k, rtol=1e-2, atol=1e-2)
                    torch.testing.assert_close(v2, v, rtol=1e-2, atol=1e-2)
    finally:
        decode_attention._launch, attention.ROPE_IN_ATTENTION = launch, saved
        torch._dynamo.reset()


def check_rope_in_qkv_steps(device: str, dtype: torch.dtype, batch: int = 2) -> None:
    """quantkit.eval.fuse.ROPE_IN_QKV: a tiny Llama of 4-bit layers (W4A16Linear), its q/k/v fused in rope order,
    decodes through rope_qkv (the rotary embedding and cache write in the q/k/v kernel's epilogue on a GPU, rope_rows
    after the reference product on the CPU) then split_kv_decode, eagerly and compiled by inductor, with the
    logits and caches of the same model fused in plain order (transformers' rotary embedding and cache write), one
    rope_qkv call a layer and step, no graph break in the compiled step; its prefill (the rows put back in order)
    gives the same logits too."""
    from torch._dynamo.utils import counters

    from quantkit.eval import attention, fuse, random_weights, throughput
    from quantkit.kernels import module as kernel_module

    def fused(rope: bool):
        saved, fuse.ROPE_IN_QKV = fuse.ROPE_IN_QKV, rope
        try:
            model, _, _ = random_weights.build("tiny-llama", group_size=32, dtype=dtype, device=device,
                                               module_factory=lambda ql: kernel_module.W4A16Linear.from_quantized(
                                                   ql, device=device), progress=False)
            info = fuse.fuse_projections(model)
        finally:
            fuse.ROPE_IN_QKV = saved
        assert info.get("rope_qkv", 0) == (model.config.num_hidden_layers if rope else 0), info
        return model

    calls, rope_qkv = [], kernel_module.W4A16Linear.rope_qkv

    def counted(self, *args):
        calls.append(self.rope)
        return rope_qkv(self, *args)

    settings = throughput.Settings(batches=(batch,), prompt_len=8, gen_len=3, cuda_graphs=device == "cuda")
    prompt = torch.randint(0, 128, (batch, 8), generator=torch.Generator().manual_seed(5)).to(device)

    def run(model, compiled: bool):
        torch._dynamo.reset()
        calls.clear()
        counters.clear()
        with (attention.grouped_decode_attention(model, decode_kernel="split"),
              throughput.opaque_quantized_linears(model) if compiled else contextlib.nullcontext()):
            decoder = throughput._compiled(model, "inductor") if compiled else None
            runner = throughput.Runner(model, batch=batch, settings=settings, prompt=prompt, decode_model=decoder)
            runner.prepare()
            runner.reset()
            runner.prefill()
            prefill = runner.logits[:, -1].float().clone()
            logits = []
            for _ in range(settings.gen_len):
                runner.decode()
                logits.append(runner.decode_logits()[:, -1].float())
            rope = attention.rope_in_qkv_of(model, batch)
        caches = [(layer.keys.clone(), layer.values.clone()) for layer in runner.cache.layers]
        # one graph a step: the custom op's decision taken without tracing into the dispatch (kernels.ops.rope_at)
        assert not counters["graph_break"], dict(counters["graph_break"])
        return prefill, torch.stack(logits), caches, rope

    kernel_module.W4A16Linear.rope_qkv = counted
    in_kernel = kernel_module.W4A16Linear.rope_in_kernel_at
    if device == "cpu":  # the steps that would run the kernel's epilogue on a GPU: here rope_rows after the reference
        kernel_module.W4A16Linear.rope_in_kernel_at = lambda self, rows: True
    try:
        with torch.inference_mode():
            plain, ordered = fused(False), fused(True)
            want_prefill, want, want_cache, rope = run(plain, False)
            assert not rope and not calls
            layers = plain.config.num_hidden_layers
            for compiled in (False, True):
                got_prefill, got, got_cache, rope = run(ordered, compiled)
                assert rope == (device == "cuda"), compiled  # (what a run records: on a GPU only)
                # prepare's decode step and the three measured ones, one call a layer each; with graphs prepare's
                # step and its capture (the graph replays them)
                assert len(calls) == (2 if settings.cuda_graphs else 1 + settings.gen_len) * layers, len(calls)
                torch.testing.assert_close(got_prefill, want_prefill, rtol=1e-3, atol=1e-3)
                torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
                for (k, v), (k2, v2) in zip(want_cache, got_cache):
                    torch.testing.assert_close(k2, k, rtol=1e-2, atol=1e-2)
                    torch.testing.assert_close(v2, v, rtol=1e-2, atol=1e-2)
    finally:
        kernel_module.W4A16Linear.rope_qkv, kernel_module.W4A16Linear.rope_in_kernel_at = rope_qkv, in_kernel
        torch._dynamo.reset()
