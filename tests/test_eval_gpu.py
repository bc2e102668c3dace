"""quantkit eval on a GPU: the kernel backend against the reference on the same weights (perplexity within 0.5%,
near-zero KL), and the CUDA-graph throughput path. Skipped without CUDA or the kernels.

The model is a tiny Llama of transformers' own (well-conditioned) random initialisation, RTN-quantized on the
device (quantkit.eval.random_weights); the reference is the same model with nn.Linear layers holding the
dequantized weights, which is what the reference backend computes (dequantize, then one matmul)."""

from __future__ import annotations

import pytest
import torch

from quantkit.eval import backends, ppl, random_weights, throughput

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)


@pytest.fixture(scope="module")
def models():
    from quantkit.kernels import kernel_available

    ok, why = kernel_available()
    if not ok:
        pytest.skip(f"W4A16 kernels unavailable: {why}")
    return random_weights.build("tiny-llama", group_size=32, dtype=torch.bfloat16, device="cuda",
                                module_factory=backends.kernel_factory("cuda"), progress=False)


def assert_kernel_agrees(kernel, reference) -> None:
    """Perplexity within 0.5%, KL < 1e-3 and top-1 agreement > 0.9 between the kernel and the reference model on
    8 random 32-token windows (M = 31 rows: the streaming tensor-core kernel)."""
    wins = torch.randint(0, kernel.config.vocab_size, (8, 32), generator=torch.Generator().manual_seed(0))
    s_ker, s_ref, agreement = ppl.score_against(kernel, reference, wins, progress=False)
    d = agreement.to_dict()
    assert abs(s_ker.ppl / s_ref.ppl - 1) < 0.005, (s_ker.ppl, s_ref.ppl)
    assert d["kl_divergence"] < 1e-3 and d["top1_agreement"] > 0.9, d


def test_kernel_and_reference_agree_on_the_same_weights(models):
    kernel, reference, _ = models
    assert type(kernel.model.layers[0].mlp.down_proj).__name__ == "W4A16Linear"
    assert_kernel_agrees(kernel, reference)


def test_graph_throughput_on_a_tiny_model(models):
    kernel, reference, _ = models
    settings = throughput.Settings(batches=(1, 4), prompt_len=16, gen_len=4, warmup=1, repeats=2)
    section = throughput.measure(kernel, reference, settings=settings, same_weights=True, progress=False)
    assert section["meaningful"] is True and "note" not in section
    assert section["cuda_graphs"] is True, section
    assert section["environment"]["device_type"] == "cuda" and section["environment"]["torch"]
    assert all(c["passed"] for c in section["checks"] if "passed" in c), section["checks"]
    assert [r["batch"] for r in section["rows"]] == [1, 4] and all(r["decode_tok_s"] > 0 for r in section["rows"])


def test_greedy_token_is_argmax_on_the_gpu():
    from greedy_check import check_greedy_token

    check_greedy_token("cuda")


def test_greedy_token_in_one_launch_on_the_gpu():
    pytest.importorskip("triton")
    from greedy_check import check_greedy_into

    check_greedy_into("cuda")


@pytest.mark.parametrize("mode", ["attention", "next"])
def test_graph_throughput_with_l2_prefetch(models, monkeypatch, mode):
    """The decode step with the linears warming their successors' weights (quantkit.eval.prefetch) passes the same
    checks and records the mode and how many linears request."""
    from quantkit.eval import prefetch
    from quantkit.kernels import ops

    kernel, reference, _ = models
    monkeypatch.setattr(prefetch, "MODE", mode)
    requested = []  # the layers whose prefetch was issued (on the model's "cuda" device, which has no index)
    ranges = ops._prefetch_ranges
    monkeypatch.setattr(ops, "_prefetch_ranges", lambda p, *a: requested.append(p) or ranges(p, *a))
    settings = throughput.Settings(batches=(1, 4), prompt_len=16, gen_len=4, warmup=1, repeats=2)
    section = throughput.measure(kernel, reference, settings=settings, same_weights=True, progress=False)
    assert all(c["passed"] for c in section["checks"] if "passed" in c), section["checks"]
    o_proj = {id(block.self_attn.o_proj.packed) for block in kernel.model.layers}
    assert requested and o_proj <= {id(p) for p in requested}
    layers = kernel.config.num_hidden_layers
    assert section["l2_prefetch"] == {**prefetch.settings(), "pairs": layers if mode == "attention" else 4 * layers - 1}
    assert all(m.warm is None for m in kernel.modules() if hasattr(m, "warm"))


@pytest.mark.parametrize("fused_combine", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_split_kv_decode_matches_sdpa(dtype, fused_combine):
    """quantkit.eval.decode_attention compiled for this GPU against SDPA in fp32 (tests/split_kv_check.py's cases),
    the ranges combined in their kernel by the last to finish (FUSED_COMBINE, its counters left zero) and by the
    combining kernel."""
    pytest.importorskip("triton")
    from split_kv_check import check_split_kv_decode

    check_split_kv_decode("cuda", dtype, fused_combine)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rope_in_attention_matches_rotary_then_cache_then_split_kv(dtype):
    """decode_attention.rope_split_kv_decode compiled for this GPU (tests/split_kv_check.py): the rotary embedding,
    the cache write at the position and the attention in one launch, against torch's rotary embedding and cache write
    with split_kv_decode after them; here the ranges run at once, the one holding the step's position possibly before
    the first range has stored its key and value. Then a tiny Llama's decode steps through it (ROPE_IN_ATTENTION),
    eager and compiled, against transformers' own."""
    pytest.importorskip("triton")
    from split_kv_check import check_rope_in_attention_steps, check_rope_split_kv_decode

    check_rope_split_kv_decode("cuda", dtype)
    if dtype == torch.bfloat16:
        check_rope_in_attention_steps("cuda", dtype)


def test_rope_in_attention_in_the_compiled_graphed_step(models, monkeypatch):
    """attention.ROPE_IN_ATTENTION with greedy.ONE_LAUNCH in the throughput run's compiled, graph-captured decode steps
    (batch 1 and 4, a 128-token prompt: ranges combined): the run's own checks against a plain forward pass hold (the
    steps' tokens feed the next ones) and it records both."""
    pytest.importorskip("triton")
    from quantkit.eval import attention, greedy

    kernel, reference, _ = models
    monkeypatch.setattr(attention, "ROPE_IN_ATTENTION", True)
    monkeypatch.setattr(greedy, "ONE_LAUNCH", True)
    settings = throughput.Settings(batches=(1, 4), prompt_len=128, gen_len=4, warmup=1, repeats=2, compile=True)
    section = throughput.measure(kernel, reference, settings=settings, same_weights=True, progress=False)
    torch._dynamo.reset()
    assert section["rope_in_attention"] is True and section["shared_cache_position"] is True
    assert section["greedy_token"] == "one launch"
    assert section["decode_attention"] == "split" and section["cuda_graphs"] is True
    assert all(c["passed"] for c in section["checks"] if "passed" in c), section["checks"]


def test_rope_in_qkv_kernel_steps_and_the_compiled_graphed_run(monkeypatch):
    """fuse.ROPE_IN_QKV on this GPU: a tiny Llama of 4-bit layers decodes through the q/k/v kernel's rotary epilogue
    then split_kv_decode, eager and compiled, graph-captured, with the logits and caches of the same model in plain
    order (tests/split_kv_check.py); then the throughput run's compiled, graph-captured steps (batch 1, 4 and 12, the
    last two token tiles: transformers' rotary embedding after the rows put back in order) pass their own checks
    against a plain forward pass and record where it ran, the baseline's rotary embedding left to inductor."""
    pytest.importorskip("triton")
    from split_kv_check import check_rope_in_qkv_steps

    from quantkit.eval import attention, fuse

    check_rope_in_qkv_steps("cuda", torch.bfloat16)
    monkeypatch.setattr(fuse, "ROPE_IN_QKV", True)
    monkeypatch.setattr(attention, "ROPE_IN_ATTENTION", False)
    kernel, reference, _ = random_weights.build("tiny-llama", group_size=32, dtype=torch.bfloat16, device="cuda",
                                                module_factory=backends.kernel_factory("cuda"), progress=False)
    settings = throughput.Settings(batches=(1, 4, 12), prompt_len=128, gen_len=4, warmup=1, repeats=2, compile=True)
    section = throughput.measure(kernel, reference, settings=settings, same_weights=True, progress=False)
    torch._dynamo.reset()
    assert section["rope_in_qkv"] == [1, 4] and section["rope_in_attention"] is False
    assert section["fused_projections"]["quantized"]["rope_qkv"] == kernel.config.num_hidden_layers
    assert section["decode_attention"] == "split" and section["cuda_graphs"] is True
    assert all(c["passed"] for c in section["checks"] if "passed" in c), section["checks"]


@pytest.mark.parametrize("fused_combine", [True, False])
@pytest.mark.parametrize("batch", [1, 8, 32])
def test_attention_launches_o_proj_programmatically_in_a_cuda_graph(monkeypatch, batch, fused_combine):
    """decode_attention.PDL: the split kernels with their launch hooks and a 4-bit o_proj (4096x4096) launched as
    their programmatic dependent, captured in one CUDA graph and replayed on new inputs each time, give the bits of
    the same calls without programmatic launches (o_proj never reads attention's output early); batch 32 is one
    range a pair (no combining kernel: o_proj follows the ranges' kernel itself). Both ways of combining the ranges
    (decode_attention.FUSED_COMBINE): fused, every replay finds the arrival counters zero again (12 replays) and they
    are zero after them."""
    pytest.importorskip("triton")
    from quantkit.eval import decode_attention
    from quantkit.kernels import W4A16Linear, kernel_available, testing

    ok, why = kernel_available()
    if not ok:
        pytest.skip(f"W4A16 kernels unavailable: {why}")
    if torch.cuda.get_device_capability()[0] < 9 or not decode_attention._PDL_TRITON:
        pytest.skip("programmatic dependent launch needs compute capability 9.0 and a Triton that asks for it")
    heads, kv_heads, d, cache = 32, 8, 128, 640
    o_proj = W4A16Linear.from_quantized(testing.random_qlinear(heads * d, heads * d, group_size=128, sym=True,
                                                               act_order=False, dtype=torch.bfloat16, seed=5),
                                        device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(batch)
    q = torch.empty(batch, heads, 1, d, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(batch, kv_heads, cache, d, device="cuda", dtype=torch.bfloat16, generator=gen)
            for _ in range(2))
    mask = (torch.arange(cache, device="cuda") < 577).expand(batch, 1, 1, cache).contiguous()

    def layer():
        out = decode_attention.split_kv_decode(q, k, v, mask, d ** -0.5)
        return o_proj(out.transpose(1, 2).reshape(batch, heads * d))

    inputs = [torch.randn(q.shape, device="cuda", dtype=q.dtype, generator=gen) for _ in range(4)]
    monkeypatch.setattr(decode_attention, "FUSED_COMBINE", fused_combine)
    monkeypatch.setattr(decode_attention, "PDL", False)
    want = []
    for x in inputs:
        q.copy_(x)
        want.append(layer().clone())
    monkeypatch.setattr(decode_attention, "PDL", True)
    o_proj.pdl = True
    assert decode_attention.pdl_on(q.device)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        layer()  # compiles the kernels' PDL variants outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            y = layer()
    for x, w in zip(inputs * 3, want * 3):
        q.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, w)
    if fused_combine:
        assert not decode_attention.counters(q.device, 0).any()


@pytest.mark.parametrize("fused_combine", [True, False])
def test_programmatic_launches_through_the_compiled_graphed_step(monkeypatch, fused_combine):
    """fuse.INDUCTOR_PDL with decode_attention.PDL: inductor's kernels, the attention kernels and every 4-bit linear
    as programmatic launches in the compiled, graph-captured decode steps (batch 1, 4 and 32; a 128-token prompt,
    so that the split-KV kernels cut each cache in ranges and combine them, in their kernel or by the combining
    kernel: decode_attention.FUSED_COMBINE); the run's own checks against a plain forward pass hold and the record
    says so."""
    pytest.importorskip("triton")
    from quantkit.eval import decode_attention, fuse
    from quantkit.kernels import kernel_available

    ok, why = kernel_available()
    if not ok:
        pytest.skip(f"W4A16 kernels unavailable: {why}")
    monkeypatch.setattr(fuse, "INDUCTOR_PDL", True)
    monkeypatch.setattr(decode_attention, "PDL", True)
    monkeypatch.setattr(decode_attention, "FUSED_COMBINE", fused_combine)
    if not (decode_attention.pdl_on(torch.device("cuda", torch.cuda.current_device())) and throughput.inductor_pdl()):
        pytest.skip("programmatic dependent launch needs compute capability 9.0, Triton's and inductor's support")
    kernel, reference, _ = random_weights.build("tiny-llama", group_size=32, dtype=torch.bfloat16, device="cuda",
                                                module_factory=backends.kernel_factory("cuda"), progress=False)
    settings = throughput.Settings(batches=(1, 4, 32), prompt_len=128, gen_len=4, warmup=1, repeats=2, compile=True)
    assert all(decode_attention.plan(b, 2, 132)[0] > 1 for b in settings.batches)  # tiny-llama's 2 KV heads
    section = throughput.measure(kernel, reference, settings=settings, same_weights=True, progress=False)
    torch._dynamo.reset()
    assert section["inductor_pdl"] is True and section["split_kv_settings"]["PDL"] is True
    assert section["split_kv_settings"]["FUSED_COMBINE"] is fused_combine
    assert section["fused_projections"]["quantized"]["norm_pdl"] > 0
    assert all(c["passed"] for c in section["checks"] if "passed" in c), section["checks"]


@pytest.mark.parametrize("fused_combine", [True, False])
def test_split_kv_decode_in_the_compiled_graphed_step(models, monkeypatch, fused_combine):
    """decode_attention "split" (the default): the throughput run's compiled, graph-captured decode steps run the split
    kernel (its plan is worked out at every real call), pass the run's own checks against a plain forward pass, and the
    result says so; the ranges combined in their kernel (FUSED_COMBINE) or by the combining kernel."""
    pytest.importorskip("triton")
    from quantkit.eval import attention, decode_attention

    kernel, reference, _ = models
    monkeypatch.setattr(decode_attention, "FUSED_COMBINE", fused_combine)
    calls = []
    real_plan = decode_attention.plan
    monkeypatch.setattr(decode_attention, "plan", lambda *a: calls.append(a) or real_plan(*a))
    # a 128-token prompt: ranges at both batches (tiny-llama's 2 KV heads), so that they are combined
    settings = throughput.Settings(batches=(1, 4), prompt_len=128, gen_len=4, warmup=1, repeats=2, compile=True)
    assert settings.decode_attention == "split"
    assert all(real_plan(b, 2, 132)[0] > 1 for b in settings.batches)
    section = throughput.measure(kernel, reference, settings=settings, same_weights=True, progress=False)
    torch._dynamo.reset()
    assert section["compiled_decode"] is True and section["cuda_graphs"] is True
    assert section["decode_attention"] == "split" and attention.DECODE_KERNEL == "sdpa"  # restored after the run
    assert section["split_kv_settings"] == decode_attention.settings() and section["split_kv_settings"]["MASK_BOUND"]
    assert section["split_kv_settings"]["FUSED_COMBINE"] is fused_combine
    assert all(c["passed"] for c in section["checks"] if "passed" in c), section["checks"]
    assert {a[0] for a in calls} >= {1, 4}, calls  # batch 1 and 4 steps went through it


def test_compiled_step_feeds_the_ws_kernel_its_image_of_x(monkeypatch):
    """A compiled step over a W4A16 layer that runs the warp-specialized kernel at 32 rows (8192x4096): the kernel
    reads the image of x that the compiled step made (kernels.ops.x_image, inductor's code, no packing launch of its
    own), and the result is the eager module's within bf16 rounding; at 8 rows (the decode kernel) no image."""
    from eval_modules import SiluDown

    from quantkit.kernels import kernel_available, ops, prepare, testing

    ok, why = kernel_available()
    if not ok or not ops.has_wgmma(torch.device("cuda")):
        pytest.skip(f"needs the kernels on a Hopper GPU: {why or 'not a Hopper GPU'}")
    packed = prepare(testing.random_qlinear(8192, 4096, group_size=128, sym=False, act_order=False,
                                            dtype=torch.bfloat16, seed=5), device="cuda")
    images, real = [], ops.w4a16_linear_image
    monkeypatch.setattr(ops, "w4a16_linear_image",
                        lambda image, *a, **kw: images.append(image.shape[1]) or real(image, *a, **kw))

    model = SiluDown(packed)
    with throughput.opaque_quantized_linears(model):
        compiled = torch.compile(model, dynamic=True)
        for rows in (32, 8):
            x = testing.random_activations(rows, 4096, dtype=torch.bfloat16, seed=rows, device="cuda")[:, None]
            want, got = model(x), compiled(x)
            assert images == ([rows] if rows == 32 else []), images
            assert ((got.float() - want.float()).norm() / want.float().norm()).item() < 1e-2
            images.clear()
    torch._dynamo.reset()
