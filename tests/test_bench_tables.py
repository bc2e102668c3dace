"""The result tables' setup column (bench/eval_table.py, bench/profile_table.py) names the attention a run's decode
steps ran, from the JSON, or for profiles recorded before the JSON said so, from the command line."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import eval_table  # noqa: E402
import profile_table  # noqa: E402

FUSED = {"quantized": {"qkv": 32, "gate_up": 32}, "baseline": {"qkv": 32, "gate_up": 32}}


def test_eval_table_names_the_decode_attention():
    def setup(**throughput):
        return eval_table.setup({"throughput": {"fused_projections": FUSED, "compiled_decode": True, **throughput},
                                 "model": {"random_weights": {}}})

    assert setup(attention="quantkit_grouped_sdpa", decode_attention="split").startswith("split-KV decode attention, ")
    near = setup(attention="quantkit_grouped_sdpa", decode_attention="split",
                 split_kv_settings={"SPLITS_ROUND": "nearest"})
    assert near.startswith("split-KV decode attention (split count rounded nearest), fused")
    assert setup(attention="quantkit_grouped_sdpa").startswith("grouped decode attention, ")  # before the option
    assert setup(attention="quantkit_grouped_sdpa", decode_attention="sdpa").startswith("grouped decode attention, ")
    assert setup(attention="sdpa").startswith("SDPA, cache repeated, ")
    assert setup(attention="quantkit_grouped_sdpa").endswith("fused q/k/v, gate/up, torch.compile")
    assert setup(compiled_x_image=True).endswith("torch.compile, ws kernel's x packed by inductor")
    assert setup(compiled_x_image=False).endswith("torch.compile, ws kernel's x packed by its own launch")
    assert setup(l2_prefetch={"mode": "off", "in_kernel": True}).endswith("torch.compile")
    assert setup(l2_prefetch={"mode": "attention", "in_kernel": True}).endswith(
        "torch.compile, L2 prefetch of the next linear (attention, from the decode kernel)")


def test_profile_table_names_the_decode_attention():
    command = "python3 bench/profile_decode.py --compile --fuse --batch 1,8,32 --out x.json"

    def setup(command=command, **run):
        return profile_table.setup({"command": command, "fused_projections": FUSED, **run}, "quantized")

    grouped = {"attention": "quantkit_grouped_sdpa"}
    assert setup(**grouped, decode_attention="split").startswith("split-KV decode attention, fused")
    assert setup(**grouped, decode_attention="sdpa").startswith("grouped decode attention, fused")
    assert setup(**grouped).startswith("grouped decode attention, fused")
    legacy = setup(command + " --decode-attention split", **grouped)  # recorded before the JSON carried it
    assert legacy.startswith("split-KV decode attention (its kernels counted as other), fused")
    assert setup(attention="sdpa").startswith("transformers SDPA (cache repeated per query head)")
    assert setup(**grouped).endswith(", torch.compile")
    image = profile_table.setup({"command": command, "fused_projections": FUSED, **grouped}, "quantized", True)
    assert image.endswith(", torch.compile, the warp-specialized kernel's x packed by inductor")


def test_profile_table_names_the_l2_prefetch():
    run = {"command": "python3 bench/profile_decode.py --compile --fuse --l2-prefetch off,attention --out x.json",
           "fused_projections": FUSED, "attention": "quantkit_grouped_sdpa", "decode_attention": "split"}
    off = profile_table.setup(run, "quantized", False, {"mode": "off", "in_kernel": True})
    assert off.endswith(", torch.compile")
    assert profile_table.setup(run, "quantized_attention", False, {"mode": "attention", "in_kernel": True}).endswith(
        ", torch.compile, L2 prefetch of the next linear (attention, from the decode kernel)")
    assert profile_table.setup(run, "quantized_next+launch", False, {"mode": "next", "in_kernel": False}).endswith(
        ", L2 prefetch of the next linear (next, its own launches)")
