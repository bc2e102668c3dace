"""A decode step's attention alone, on a model's shapes: the throughput runs' grouped SDPA against the split-KV
decoding kernel (quantkit.eval.attention.DECODE_KERNEL "sdpa" / "split", quantkit.eval.decode_attention), both
torch.compile'd as the decode step is, over a static cache of --cache positions of which the first --filled attend,
each a CUDA graph replayed after a reading flush of the L2 (bench/kernel_bench.py's time_calls: the two interleaved),
median of repeats.

    python3 bench/decode_attention_bench.py --out bench/results/decode_attention_h200.json

Each variant's output is compared with SDPA's math backend on the same inputs before it is timed. --sweep also times
the split kernel at every combination of its launch settings (quantkit.eval.decode_attention's PROGRAMS_PER_SM,
BLOCK_S, NUM_WARPS), each named split_p{programs a multiprocessor}_b{block}_w{warps}. split_up is the default settings
with the split count rounded up (SPLITS_ROUND "up": two ranges a pair and the combining kernel at batch 32, not one);
split_full is the default settings with the ranges cutting the whole cache (MASK_BOUND off) instead of
ending at the last position that attends; split_unfused is the default settings with the ranges combined by the
second kernel (FUSED_COMBINE off) instead of by the last range of each pair to finish (split_fused, the other way
round, where QUANTKIT_SPLIT_KV_FUSED_COMBINE=0 made the second kernel the default). --o-proj also times the layer
after attention with it: the split kernels then a 4-bit o_proj of the model's shape (group 128, quantkit's W4A16
kernel), as plain launches (split+o_proj) and with the kernels' programmatic launches into it (split+o_proj_pdl,
decode_attention.PDL; Hopper and later), both also with the other way of combining the ranges
(split_unfused+o_proj, split_unfused+o_proj_pdl; or split_fused+...), and o_proj alone on the same output (o_proj).

    python3 bench/decode_attention_bench.py --batch 1,8 --o-proj --out bench/results/decode_attention_fused.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernel_bench import time_calls  # noqa: E402
from quantkit.eval import attention, decode_attention, run_settings  # noqa: E402


class _Head(torch.nn.Module):  # what transformers hands the attention function: its groups
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups


def apply(settings: dict) -> None:
    """decode_attention's launch settings (its settings() keys) set to these."""
    for name, value in settings.items():
        setattr(decode_attention, name, value)


def other_combine(defaults: dict) -> tuple[str, bool]:
    """The split variant with the ranges combined the other way from the default settings: its name and
    decode_attention.FUSED_COMBINE."""
    fused = not defaults["FUSED_COMBINE"]
    return ("split_fused" if fused else "split_unfused"), fused


def o_proj_variants(q, k, v, mask, scale: float, defaults: dict) -> dict:
    """The layer after attention: the split kernels, then a 4-bit o_proj (H * D square, group 128) on their output,
    with plain launches and with programmatic ones (each sets decode_attention's default settings but PDL, and
    o_proj.pdl, as it is captured), each with the ranges combined both ways (decode_attention.FUSED_COMBINE, set
    alike), and the same o_proj alone on the output of the default settings."""
    from quantkit.kernels import W4A16Linear, self_check, testing

    self_check()
    b, h, _, d = q.shape
    o_proj = W4A16Linear.from_quantized(testing.random_qlinear(h * d, h * d, group_size=128, sym=True, act_order=False,
                                                               dtype=q.dtype, seed=5), device=q.device)
    apply(defaults)  # not what the contender before left
    attended = decode_attention.split_kv_decode(q, k, v, mask, scale).transpose(1, 2).reshape(b, h * d).contiguous()

    def layer(pdl: bool, fused: bool = defaults["FUSED_COMBINE"]):
        def call():
            apply({**defaults, "PDL": pdl, "FUSED_COMBINE": fused})
            o_proj.pdl = pdl
            out = decode_attention.split_kv_decode(q, k, v, mask, scale)
            y = o_proj(out.transpose(1, 2).reshape(b, h * d))
            apply(defaults)
            return y
        return call

    def alone():
        o_proj.pdl = False
        return o_proj(attended)

    other, fused = other_combine(defaults)
    return {"split+o_proj": layer(False), "split+o_proj_pdl": layer(True), f"{other}+o_proj": layer(False, fused),
            f"{other}+o_proj_pdl": layer(True, fused), "o_proj": alone}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="1,8,32")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--cache", type=int, default=640, help="static cache length (prompt + generated)")
    ap.add_argument("--filled", type=int, default=576, help="positions that attend (the mean over a run)")
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--sweep", action="store_true", help="also every combination of the split kernel's launch settings")
    ap.add_argument("--o-proj", action="store_true", help="also attention then a 4-bit o_proj, with and without PDL")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    device, dtype = "cuda", torch.bfloat16
    module = _Head(args.heads // args.kv_heads)
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    defaults = decode_attention.settings()
    result = {"command": run_settings.with_settings("python3 bench/decode_attention_bench.py " + " ".join(sys.argv[1:])),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__, "split_defaults": defaults,
              "rows": []}
    ok = True
    for batch in map(int, args.batch.split(",")):
        gen = torch.Generator(device=device).manual_seed(batch)
        q = torch.randn(batch, args.heads, 1, args.head_dim, device=device, dtype=dtype, generator=gen)
        k, v = (torch.randn(batch, args.kv_heads, args.cache, args.head_dim, device=device, dtype=dtype, generator=gen)
                for _ in range(2))
        mask = (torch.arange(args.cache, device=device) < args.filled).expand(batch, 1, 1, args.cache).contiguous()
        scale = args.head_dim ** -0.5
        kr, vr = (t.repeat_interleave(args.heads // args.kv_heads, dim=1).float() for t in (k, v))
        want = torch.nn.functional.scaled_dot_product_attention(q.float(), kr, vr, attn_mask=mask, scale=scale)
        want = want.transpose(1, 2)
        row = {"batch": batch, "kv_bytes": 2 * k.numel() * k.element_size()}
        compiled = torch.compile(lambda: attention.grouped_sdpa(module, q, k, v, mask, scaling=scale)[0], dynamic=True)

        def variant(kernel, settings=defaults):  # read as the step is traced and captured (DECODE_KERNEL guarded on)
            def call():
                attention.DECODE_KERNEL = kernel
                apply(settings)
                return compiled()
            return call

        fns = {"sdpa": variant("sdpa"), "split": variant("split"),
               "split_up": variant("split", {**defaults, "SPLITS_ROUND": "up"}),
               "split_full": variant("split", {**defaults, "MASK_BOUND": False})}
        other, fused = other_combine(defaults)
        fns[other] = variant("split", {**defaults, "FUSED_COMBINE": fused})
        if args.o_proj:
            fns.update(o_proj_variants(q, k, v, mask, scale, defaults))
        if args.sweep:
            for per_sm, block, warps in itertools.product((1, 2, 4, 8, 16), (32, 64, 128), (4, 8)):
                fns[f"split_p{per_sm}_b{block}_w{warps}"] = variant("split", {
                    **defaults, "PROGRAMS_PER_SM": per_sm, "BLOCK_S": block, "NUM_WARPS": warps})
        with torch.inference_mode():
            for kernel, fn in fns.items():
                if kernel.startswith("o_proj") or "+o_proj" in kernel:  # checked against the plain launches' bits
                    plain = f"{kernel.split('+')[0]}+o_proj" if "+o_proj" in kernel else "split+o_proj"
                    row[kernel] = {"rel_err": 0.0 if torch.equal(fn(), fns[plain]()) else float("inf")}
                    continue
                row[kernel] = {"rel_err": ((fn().float() - want).norm() / want.norm()).item()}
            bad = [kernel for kernel in fns if not row[kernel]["rel_err"] < 1e-2]
            if not bad:
                for kernel, timing in time_calls(fns, flush, args.reps, "clean").items():
                    row[kernel].update(timing)
        ok &= not bad
        for kernel in fns:
            t = row[kernel]
            print(f"batch {batch:3d} {kernel}: rel err {t['rel_err']:.2e}" +
                  (f", {t['us']:.1f} us" + ("" if "o_proj" in kernel else
                                            f" ({row['kv_bytes'] / t['us'] / 1e6:.2f} TB/s of cache)") if "us" in t
                   else " FAILED the check" if kernel in bad else ""), flush=True)
        result["rows"].append(row)
        if args.sweep and all("us" in row[kernel] for kernel in fns):
            best = min((kernel for kernel in fns if kernel.startswith("split_")), key=lambda kernel: row[kernel]["us"])
            print(f"batch {batch:3d} fastest split: {best}, {row[best]['us']:.1f} us", flush=True)
    attention.DECODE_KERNEL = "sdpa"
    apply(defaults)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
