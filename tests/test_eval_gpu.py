"""quantkit eval on a GPU: the kernel backend against the reference on the same weights (perplexity within 0.5%,
near-zero KL), and the CUDA-graph throughput path on a tiny checkpoint. Skipped without CUDA or the kernels."""

from __future__ import annotations

import pytest
import torch

from hub_fixtures import make_artifact
from quantkit.eval import backends, ppl, throughput, validate

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from quantkit.kernels import kernel_available

    ok, why = kernel_available()
    if not ok:
        pytest.skip(f"W4A16 kernels unavailable: {why}")
    return make_artifact(tmp_path_factory.mktemp("eval_gpu") / "tiny", seed=3)


def test_kernel_and_reference_agree_on_the_same_weights(artifact):
    ref = backends.load(artifact, "reference", dtype=torch.bfloat16, device="cuda")
    ker = backends.load(artifact, "kernel", dtype=torch.bfloat16, device="cuda")
    assert type(ker.model.layers[0].mlp.down_proj).__name__ == "W4A16Linear"
    wins = torch.randint(0, ker.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))
    s_ker, s_ref, agreement = ppl.score_against(ker, ref, wins, progress=False)
    d = agreement.to_dict()
    assert abs(s_ker.ppl / s_ref.ppl - 1) < 0.005, (s_ker.ppl, s_ref.ppl)
    assert d["kl_divergence"] < 1e-3 and d["top1_agreement"] > 0.95, d


def test_graph_throughput_on_a_tiny_checkpoint(artifact):
    model = backends.load(artifact, "kernel", dtype=torch.bfloat16, device="cuda")
    dense = validate.dense_model(artifact, dtype=torch.bfloat16, device="cuda")
    settings = throughput.Settings(batches=(1, 4), prompt_len=16, gen_len=4, warmup=1, repeats=2)
    section = throughput.measure(model, dense, settings=settings, same_weights=True, progress=False)
    assert section["meaningful"] is True and "note" not in section
    assert section["cuda_graphs"] is True, section
    assert section["environment"]["device_type"] == "cuda" and section["environment"]["torch"]
    assert all(c["passed"] for c in section["checks"] if "passed" in c), section["checks"]
    assert [r["batch"] for r in section["rows"]] == [1, 4] and all(r["decode_tok_s"] > 0 for r in section["rows"])
