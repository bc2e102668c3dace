"""The result tables' setup column (bench/eval_table.py, bench/profile_table.py) names the attention a run's decode
steps ran, from the JSON, or for profiles recorded before the JSON said so, from the command line; the decode
profile's time of each linear by its role in a block (bench/profile_decode.py), and its table."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import eval_table  # noqa: E402
import kernel_table  # noqa: E402
import profile_decode  # noqa: E402
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
    pdl = {"SPLITS_ROUND": "nearest", "PDL": True}
    assert setup(attention="quantkit_grouped_sdpa", decode_attention="split", split_kv_settings=pdl).startswith(
        "split-KV decode attention (split count rounded nearest, programmatic launches), fused")
    assert setup(attention="quantkit_grouped_sdpa", decode_attention="split", split_kv_settings=pdl,
                 fused_projections={**FUSED, "quantized": {"qkv": 32, "gate_up": 32, "o_proj_pdl": 32}}).startswith(
        "split-KV decode attention (split count rounded nearest, programmatic launches into the 4-bit o_proj), fused")
    assert setup(attention="quantkit_grouped_sdpa").startswith("grouped decode attention, ")  # before the option
    assert setup(attention="quantkit_grouped_sdpa", decode_attention="sdpa").startswith("grouped decode attention, ")
    assert setup(attention="sdpa").startswith("SDPA, cache repeated, ")
    assert setup(attention="quantkit_grouped_sdpa").endswith("fused q/k/v, gate/up, torch.compile")
    assert setup(compiled_x_image=True).endswith("torch.compile, ws kernel's x packed by inductor")
    assert setup(compiled_x_image=False).endswith("torch.compile, ws kernel's x packed by its own launch")
    assert setup(compiled_x_image=True, ws_pipelined_32=True).endswith(
        "ws kernel's x packed by inductor, ws kernel's 32-token instance pipelined")
    assert setup(compiled_x_image=True, combo_kernels=True, greedy_token="two stages").endswith(
        "ws kernel's x packed by inductor, inductor's combo kernels, greedy token in two stages")
    assert setup(greedy_token="two stages", shared_cache_position=True).endswith(
        "greedy token in two stages, one cache position for every layer")
    assert setup(greedy_token="two stages", shared_cache_position=False).endswith("greedy token in two stages")
    assert setup(combo_kernels=True, inductor_pdl=True,
                 fused_projections={**FUSED, "quantized": {"qkv": 32, "gate_up": 32, "norm_pdl": 64}}).endswith(
        "inductor's combo kernels, programmatic launches through the step (4-bit q/k/v and gate/up too)")
    pairs = {**FUSED, "quantized": {"qkv": 32, "gate_up": 32, "glu": 32, "glu_pdl": 32}}
    assert setup(fused_projections=pairs, glu_epilogue=True).endswith(
        "fused q/k/v, gate/up, 4-bit gate/up's SiLU and multiply in its kernel, down as its programmatic launch, "
        "torch.compile")
    assert setup(fused_projections=pairs, glu_epilogue=False).endswith("fused q/k/v, gate/up, torch.compile")
    fold = {**FUSED, "quantized": {"qkv": 32, "gate_up": 32, "norm_fold": 32, "norm_fold_rows": 1}}
    assert setup(fused_projections=fold).endswith(
        "gate/up, 4-bit residual adds and RMSNorms folded into the kernels up to 1 token(s), torch.compile")
    assert setup(fused_projections={**fold, "quantized": {**fold["quantized"], "norm_fold_ss": True}}).endswith(
        "folded into the kernels up to 1 token(s), o_proj's sums of squares to gate/up and down's to q/k/v, "
        "torch.compile")
    ss_mlp = {**fold["quantized"], "norm_fold_ss": True, "norm_fold_ss_down": False}
    assert setup(fused_projections={**fold, "quantized": ss_mlp}).endswith(
        "up to 1 token(s), o_proj's sums of squares to gate/up, torch.compile")
    assert setup(stream_wk_warps_one_tile=8).endswith(
        "torch.compile, decode kernel in blocks of 8 warps at one token tile")
    assert setup(stream_wk_warps_one_tile=4).endswith("torch.compile")
    assert setup(l2_prefetch={"mode": "off", "in_kernel": True}).endswith("torch.compile")
    assert setup(l2_prefetch={"mode": "attention", "in_kernel": True}).endswith(
        "torch.compile, L2 prefetch of the next linear (attention, from the decode kernel)")


def test_eval_table_prints_a_missed_target_apart():
    """A ratio that two decimals would round onto its target is printed with as many more as it takes, so that "no"
    never stands next to the target's own figure; the others keep two."""
    assert eval_table.ratio(2.497, 2.5) == "2.497x"
    assert eval_table.ratio(2.5, 2.5) == eval_table.ratio(2.504, 2.5) == "2.50x"
    assert eval_table.ratio(2.374, 2.5) == eval_table.ratio(2.374, None) == "2.37x"
    assert eval_table.ratio(2.497, None) == "2.50x"
    assert eval_table.ratio(0.8996, 0.9) == "0.8996x"


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
    assert setup(**grouped, combo_kernels=False).endswith(", torch.compile")
    assert setup(**grouped, combo_kernels=True).endswith(", torch.compile, inductor's combo kernels")
    assert setup(**grouped, combo_kernels=True, inductor_pdl=True, split_kv_settings={"PDL": True}).endswith(
        ", inductor's combo kernels, attention's programmatic launches into o_proj, "
        "programmatic launches through the step")
    assert setup(**grouped, inductor_pdl=True, shared_cache_position=True).endswith(
        ", programmatic launches through the step, one cache position for every layer")
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
    assert profile_table.setup(run, "quantized_next+evict", False,
                               {"mode": "next", "in_kernel": True, "evict_first": True}).endswith(
        ", L2 prefetch of the next linear (next, from the decode kernel, its own weights evict-first)")


def test_profile_table_names_the_pipelined_instance():
    """A row measured with the warp-specialized kernel's pipelined 32-token instance (profile_decode.py --ws-pipelined,
    recorded per row) says so; the rows without it, the baseline's included, do not."""
    run = {"command": "python3 bench/profile_decode.py --compile --fuse --ws-pipelined both --out x.json",
           "fused_projections": FUSED, "attention": "quantkit_grouped_sdpa", "decode_attention": "split"}
    pipe = {"x_image": True, "ws_pipelined_32": True}
    assert profile_table.row_setup(run, "quantized_pipe", pipe).endswith(
        ", torch.compile, the warp-specialized kernel's x packed by inductor, its 32-token instance pipelined")
    assert profile_table.row_setup(run, "quantized", {"x_image": True}).endswith("packed by inductor")
    assert profile_table.row_setup(run, "quantized", {"ws_pipelined_32": False}).endswith(", torch.compile")


def test_profile_table_pairs_each_combo_setting_with_its_own_baseline():
    """profile_decode.py --combo both: each model's step both ways; a quantized row pairs with the baseline row of its
    own suffix, the other variants with 'baseline', and each row's setup says its own combo setting."""
    run = {"command": "python3 bench/profile_decode.py --compile --fuse --combo both --out x.json",
           "fused_projections": FUSED, "attention": "quantkit_grouped_sdpa", "decode_attention": "split",
           "combo_kernels": True,
           "runs": [{"model": m, "batch": 32, "combo_kernels": m in ("quantized", "baseline", "quantized_pdl")}
                    for m in ("quantized", "baseline", "quantized_pdl", "quantized_combo_off", "baseline_combo_off")]}
    pairs = {model: b["model"] for model, _, _, b in profile_table.paired_rows(run)}
    assert pairs == {"quantized": "baseline", "quantized_pdl": "baseline", "quantized_combo_off": "baseline_combo_off"}
    by_model = {r["model"]: r for r in run["runs"]}
    assert profile_table.row_setup(run, "quantized", by_model["quantized"]).endswith("inductor's combo kernels")
    assert profile_table.row_setup(run, "quantized_combo_off", by_model["quantized_combo_off"]).endswith(
        ", torch.compile")
    assert profile_table.row_setup(run, "quantized", {}).endswith("inductor's combo kernels")  # the run's setting


def test_profile_decode_parses_the_prefetch_modes():
    assert profile_decode.parse_mode("next") == ("next", False, False)
    assert profile_decode.parse_mode("attention+launch") == ("attention", True, False)
    assert profile_decode.parse_mode("next+evict") == ("next", False, True)
    for bad in ("all", "next+launch+evict", "next+fast", "+launch", ""):
        assert profile_decode.parse_mode(bad) is None, bad


def test_profile_decode_times_each_linear_by_its_role(monkeypatch):
    """linear_roles lists a fused tiny Llama's linears in the order a step runs them, named by their role; by_linear
    finds, in a real profiler trace of two forward passes whose quantized linears are opaque ops (as in a compiled
    step), one outermost op per linear (the reference's own F.linear inside each op is not counted again) and adds
    them up by role, leaving out a matrix product of the step whose shapes are no linear's; a trace that does not hold
    one op per linear gives a reason instead of a wrong attribution."""
    from torch.profiler import ProfilerActivity, profile

    from quantkit.eval import fuse, random_weights, throughput
    from quantkit.kernels import W4A16Linear

    model, _, _ = random_weights.build("tiny-llama", group_size=32, dtype=torch.bfloat16, device="cpu",
                                       module_factory=lambda ql: W4A16Linear.from_quantized(ql, device="cpu"),
                                       progress=False)
    monkeypatch.setattr(fuse, "NORM_FOLD", True)  # (its folded blocks: the last part)
    fuse.fuse_projections(model)
    blocks = len(model.model.layers)
    block = ["self_attn.q_proj.shared.fused", "self_attn.o_proj", "mlp.gate_up", "mlp.down_proj"]
    roles = profile_decode.linear_roles(model)
    assert roles == block * blocks + ["lm_head"] and blocks == 2
    shapes = profile_decode.linear_shapes(model)
    assert (128, 128) in shapes and (128, 512) in shapes and all(a <= b for a, b in shapes)
    ids = torch.randint(0, model.config.vocab_size, (1, 5))
    with throughput.opaque_quantized_linears(model), torch.inference_mode(), \
            profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(2):
            torch.mm(torch.ones(1, 64), torch.ones(64, 1))  # a matrix product of the step that is no linear
            model(ids)
    events = prof.events()
    got = profile_decode.by_linear(events, roles, 2, shapes)
    assert {role: v["calls"] for role, v in got.items()} == {**dict.fromkeys(block, blocks), "lm_head": 1}
    assert all(v["us"] == 0 for v in got.values())  # a CPU trace: no kernels
    assert "20 linear ops in 2 steps" in profile_decode.by_linear(events, roles, 2)  # the product counted without shapes
    assert profile_decode.not_linears(events, 2, shapes) == {"ops": ["aten::mm [[1, 64], [64, 1]]"], "us": 0}
    assert "linear ops in 3 steps" in profile_decode.by_linear(events, roles, 3, shapes)
    assert f"18 linear ops in 2 steps of {len(roles) - 4} linears" in profile_decode.by_linear(events, roles[4:], 2,
                                                                                               shapes)
    with throughput.opaque_quantized_linears(model), torch.inference_mode(), \
            profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(2):
            model(ids[:, :1])  # one token: the folded blocks' ops (fuse.FoldedDecoderLayer)
    got = profile_decode.by_linear(prof.events(), roles, 2, shapes)
    assert isinstance(model.model.layers[0], fuse.FoldedDecoderLayer)
    assert {role: v["calls"] for role, v in got.items()} == {**dict.fromkeys(block, blocks), "lm_head": 1}


def test_profile_decode_counts_a_qkv_with_its_rotary_epilogue_as_its_linear(monkeypatch):
    """With fuse.ROPE_IN_QKV a decode step's q/k/v is the opaque op quantized_rope_qkv (the projection, its rotary
    embedding and cache write): by_linear counts it, not the reference's own product inside it (which a GPU's kernel
    does not have), as the block's q/k/v, one op a linear, in a real profiler trace of two steps of a fused tiny
    Llama's opaque linears called in module order."""
    from torch.profiler import ProfilerActivity, profile

    from quantkit.eval import fuse, random_weights, throughput
    from quantkit.kernels import W4A16Linear

    model, _, _ = random_weights.build("tiny-llama", group_size=32, dtype=torch.bfloat16, device="cpu",
                                       module_factory=lambda ql: W4A16Linear.from_quantized(ql, device="cpu"),
                                       progress=False)
    monkeypatch.setattr(fuse, "ROPE_IN_QKV", True)
    assert fuse.fuse_projections(model)["rope_qkv"] == len(model.model.layers)
    roles, linears = profile_decode.linear_roles(model), profile_decode._linears(model)
    shapes = profile_decode.linear_shapes(model)
    with throughput.opaque_quantized_linears(model), torch.inference_mode(), \
            profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(2):
            for name, inner in linears:
                layer = model.get_submodule(name)  # (the opaque op's module: _Opaque, or lm_head's nn.Linear)
                x = torch.randn(1, 1, inner.in_features, dtype=torch.bfloat16)
                if getattr(layer, "rope", None) is None:
                    layer(x)
                    continue
                heads, kv, d = layer.rope
                cos, sin = torch.ones(1, 1, d, dtype=torch.bfloat16), torch.zeros(1, 1, d, dtype=torch.bfloat16)
                caches = [torch.zeros(1, kv, 4, d, dtype=torch.bfloat16) for _ in range(2)]
                layer.rope_qkv(x, cos, sin, *caches, torch.tensor([1]))
    events = prof.events()
    step = [ev.name.removeprefix("quantkit_eval::") for ev in profile_decode._outermost_linear_ops(events)]
    assert step[:4] == ["quantized_rope_qkv"] + ["quantized_linear"] * 3 and step[len(roles) - 1] == "aten::linear"
    got = profile_decode.by_linear(events, roles, 2, shapes)
    assert isinstance(got, dict), got
    assert {role: v["calls"] for role, v in got.items()} == {**dict.fromkeys(roles[:4], len(model.model.layers)),
                                                            "lm_head": 1}


def test_profile_table_lists_the_linears_by_role():
    run = {"command": "python3 bench/profile_decode.py --compile --fuse --out x.json", "fused_projections": FUSED,
           "attention": "quantkit_grouped_sdpa", "decode_attention": "split", "runs": [
               {"model": "quantized", "batch": 1, "by_linear": {"self_attn.q_proj.shared.fused": {"us": 400.0},
                                                               "self_attn.o_proj": {"us": 300.0}, "lm_head": {"us": 250.0}}},
               {"model": "quantized", "batch": 8, "by_linear": "no ops"},
               {"model": "baseline", "batch": 1, "by_linear": {"self_attn.q_proj.shared.fused": {"us": 800.0},
                                                              "self_attn.o_proj": {"us": 450.0}, "lm_head": {"us": 250.0}}},
               {"model": "baseline", "batch": 8, "by_linear": "no ops"}]}
    lines = profile_table.by_linear_table(["abc1234"], [run])
    assert lines[3] == "| kernels | setup | batch | q/k/v | o_proj | lm_head |"
    assert lines[5:] == ["| abc1234 | split-KV decode attention, fused q/k/v and gate/up, torch.compile | 1 | "
                         "400 (800) 2.00x | 300 (450) 1.50x | 250 (250) 1.00x |"]
    assert profile_table.by_linear_table(["abc1234"], [{**run, "runs": run["runs"][1::2]}]) == []


def test_kernel_table_l2_lists_the_kernel_with_and_without_its_weights_in_the_l2():
    def row(n, k, m, cold, warm=None):
        r = {"N": n, "K": k, "group": 128, "M": m, "cublas_bf16": {"us": 20.0}, "quantkit": {"us": cold}}
        return {**r, "quantkit_l2": {"us": warm}} if warm else r

    data = {"device": "NVIDIA H200", "torch": "2.11", "timing": "t", "command": "c",
            "results": [row(14336, 4096, 1, 17.0, 10.0), row(4096, 4096, 8, 13.0, 6.5), row(4096, 4096, 1, 12.0, 4.0),
                        row(4096, 14336, 1, 19.0)]}
    lines = kernel_table.l2_table(data)
    assert lines[4:] == ["| 4096x4096 | 128 | 1 | 12.0 | 4.0 | 3.00x | 20.0 |",
                         "| 4096x4096 | 128 | 8 | 13.0 | 6.5 | 2.00x | 20.0 |",
                         "| 14336x4096 | 128 | 1 | 17.0 | 10.0 | 1.70x | 20.0 |"]


def test_kernel_table_compare_lists_both_runs_dispatch_where_both_measured():
    def row(n, k, m, us, group=128):
        return {"N": n, "K": k, "group": group, "M": m, "cublas_bf16": {"us": 40.0},
                "quantkit": {"us": us, "speedup_vs_cublas": 40.0 / us}}

    base = {"device": "NVIDIA H100", "torch": "2.11", "timing": "t", "command": "a",
            "results": [row(4096, 4096, 8, 13.0), row(4096, 4096, 1, 12.0), row(28672, 8192, 1, 50.0, 32),
                        row(14336, 4096, 1, 20.0), row(4096, 14336, 1, 22.0)]}
    other = {**base, "command": "b", "results": [row(4096, 4096, 1, 10.0), row(14336, 4096, 1, 25.0),
                                                 row(28672, 8192, 1, 40.0, 32), row(4096, 4096, 8, 13.0),
                                                 {**row(4096, 14336, 1, 1.0), "quantkit": {"error": "failed"}}]}
    lines = kernel_table.compare_table(base, other, "four", "eight")
    assert lines[2] == "| N x K | group | M | four | eight | eight faster by |"
    assert lines[4:] == ["| 4096x4096 | 128 | 1 | 12.0 (3.33x) | 10.0 (4.00x) | 1.200x |",
                         "| 4096x4096 | 128 | 8 | 13.0 (3.08x) | 13.0 (3.08x) | 1.000x |",
                         "| 14336x4096 | 128 | 1 | 20.0 (2.00x) | 25.0 (1.60x) | 0.800x |",
                         "| 28672x8192 | 32 | 1 | 50.0 (0.80x) | 40.0 (1.00x) | 1.250x |"]


def test_profile_table_keeps_the_rows_of_a_run_cut_short_before_the_baseline(capsys):
    """A profile cut short by its time limit (here a real one: the bf16 model measured at batch 1 only) still gives
    its quantized rows, with a dash where the baseline's figures would be, instead of failing."""
    path = Path(__file__).resolve().parents[1] / "bench/results/decode_profile_h200_l2_e95c44e.json"
    profile_table.main([f"e95c44e={path}"])
    out = capsys.readouterr().out
    assert "A dash: the run ended before it measured the bf16 model" in out
    rows = [line for line in out.splitlines() if line.startswith("| e95c44e")]
    assert len(rows) == 3
    assert rows[0].split(" | ")[3:5] == ["2,578 (4,819)", "1.87x"]
    assert rows[1].split(" | ")[3:6] == ["3,033 (-)", "-", "2,069 (-)"]


def test_profile_decode_counts_kernels_not_the_annotations_around_them():
    """kernels_by_kind sums the device events of a profile by kind, per step; a device-side annotation (inductor's
    "## Call CompiledFxGraph ... ##" around a whole compiled step, on the GPU as long as the step) is no kernel: on
    the H200 it once made 'other' 21,686 us of a 2,588 us step."""
    from torch.autograd.profiler_util import FunctionEvent

    def event(i, name, us, annotation=False, device=torch.autograd.DeviceType.CUDA):
        return FunctionEvent(id=i, name=name, thread=0, start_us=0, end_us=us, device_type=device, use_device="cuda",
                             is_user_annotation=annotation)

    events = [event(1, "void qk_mma_stream<QkBF16, 1, true, true, false>(...)", 8.0),
              event(2, "nvjet_sm90_tst_256x8_64x6_2x1_v_bz_TNT", 6.0), event(3, "_split_kv_partial", 4.0),
              event(4, "triton_poi_fused_add_mul_0", 2.0),
              event(5, "## Call CompiledFxGraph fx4xzmejgwwfs ##", 400.0, annotation=True),
              event(6, "aten::mm", 50.0, device=torch.autograd.DeviceType.CPU)]
    kinds, top = profile_decode.kernels_by_kind(events, 2)
    assert {k: v["us"] for k, v in kinds.items()} == {"l2_prefetch": 0, "w4a16": 4.0, "gemm": 3.0, "attention": 2.0,
                                                      "other": 1.0}
    assert sum(v["kernels"] for v in profile_decode.kernels_by_kind(events, 1)[0].values()) == 4
    assert [name for name, *_ in top][0].startswith("void qk_mma_stream") and len(top) == 4
