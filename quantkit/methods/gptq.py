"""GPTQ, layer by layer: one decoder block on the device at a time, its calibration inputs carried to the next.

For each block (``quantize_layer``, called by convert in order):
1. its inputs are the outputs of the previous, already quantized, block (the first block's are the embedded
   calibration tokens);
2. the transformers decoder layer for the config is built on the device and loaded with the block's weights;
3. stage by stage (true-sequential: q/k/v, o, gate/up, down), forward hooks collect the mean x x^T of every
   linear's inputs, the stage's linears are solved by quantkit.methods.gptq_solver (linears that read the same
   input, e.g. q/k/v, share one Hessian and are solved as one stacked weight), and the dequantized weights are
   written back into the module, so later stages see the quantized earlier ones;
4. the quantized block runs once more to produce the next block's inputs.

lm_head, when the recipe quantizes it (``quantize_head``, called after the last block): its inputs are the final
norm of the last quantized block's outputs, so it is solved like any other linear against their Hessian.

MoE: transformers 5 fuses experts into 3-D parameters; the block's experts module is replaced by one holding
the checkpoint's per-expert linears with the same routing, so every expert gets its own Hessian from the tokens
routed to it. Experts (or any linear) that saw fewer than ``MIN_TOKENS`` calibration tokens are rounded to
nearest instead, and summary() lists them with their token counts.

Resume: each finished block's quantized linears are saved under ``state_dir`` (with a fingerprint of model,
recipe and calibration tokens), and the carried activations every ``QUANTKIT_GPTQ_SNAPSHOT_S`` seconds (default
120). A restarted run takes finished blocks from there and regenerates missing activations by running the saved
quantized blocks from the last snapshot, the same computation as the uninterrupted run, so the bytes match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from quantkit import __version__, calibration
from quantkit.errors import InputError, UnsupportedError
from quantkit.methods import rtn, scale_dtype
from quantkit.methods.gptq_solver import NumericalError, output_error, solve
from quantkit.qlinear import QuantizedLinear

log = logging.getLogger(__name__)

MIN_TOKENS = 128  # a linear whose inputs came from fewer calibration tokens is rounded to nearest
FORWARD_BATCH = 8  # calibration samples per forward pass
EXPERT_RE = re.compile(r"^(?P<prefix>.+\.experts)\.(?P<e>\d+)\.(?P<leaf>\w+)\.weight$")
GATE, UP, DOWN = "gate", "up", "down"
EXPERT_ROLES = {"gate_proj": GATE, "w1": GATE, "up_proj": UP, "w3": UP, "down_proj": DOWN, "w2": DOWN}
KILL_AFTER_ENV = "QUANTKIT_GPTQ_TEST_KILL_AFTER"  # tests: exit hard after saving this block
SNAPSHOT_ENV = "QUANTKIT_GPTQ_SNAPSHOT_S"


class _StageDone(Exception):
    """Raised by a hook to stop a forward pass once every linear of the stage has seen its input."""


class PerExpert(nn.Module):
    """Drop-in for transformers' fused experts (forward(hidden, top_k_index, top_k_weights)) with one nn.Linear
    per checkpoint tensor, so that hooks see each expert's own inputs. Output is summed per token in a fixed
    order (deterministic on every device)."""

    def __init__(self, leaves: dict[int, dict[str, str]], hidden: int, inter: int, act):
        super().__init__()
        self.num_experts = max(leaves) + 1
        self.leaves = leaves  # expert -> role -> checkpoint leaf name (gate_proj / w1 ...)
        self.experts = nn.ModuleList(
            nn.ModuleDict({
                leaf: nn.Linear(inter if role == DOWN else hidden, hidden if role == DOWN else inter, bias=False)
                for leaf, role in ((leaf, EXPERT_ROLES[leaf]) for leaf in leaves.get(e, {}).values())
            })
            for e in range(self.num_experts)
        )
        self.act = act

    def forward(self, hidden_states, top_k_index, top_k_weights):
        tokens, k = top_k_index.shape
        out = hidden_states.new_zeros(tokens, k, hidden_states.shape[-1])
        for e in range(self.num_experts):
            token_idx, slot = torch.where(top_k_index == e)
            if token_idx.numel() == 0:
                continue
            mods, leaves = self.experts[e], self.leaves[e]
            x = hidden_states[token_idx]
            h = self.act(mods[leaves[GATE]](x)) * mods[leaves[UP]](x)
            y = mods[leaves[DOWN]](h) * top_k_weights[token_idx, slot, None].to(h.dtype)
            out[token_idx, slot] = y.to(out.dtype)
        return out.sum(dim=1)


class GPTQQuantizer:
    def __init__(self, recipe, *, source, plan, state_dir: Path, device: str | None = None, progress: bool = True):
        from transformers import AutoConfig, AutoTokenizer

        self.recipe, self.source, self.plan = recipe, source, plan
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.progress = progress
        self.opts = recipe.gptq
        self.scale_dtype = scale_dtype(recipe)
        self.min_zero = 1 if recipe.checkpoint_format == "gptq" else 0
        self.layers = {layer.index: layer for layer in plan.layers}
        self.config = AutoConfig.from_pretrained(source.dir)
        self.config._attn_implementation = "sdpa"  # causal masking from is_causal, no mask tensor
        self.config.use_cache = False
        try:
            tokenizer = AutoTokenizer.from_pretrained(source.dir)
        except (OSError, ValueError) as e:
            raise InputError(f"{source.dir}: cannot load the tokenizer for calibration ({e})") from e
        cal = recipe.calibration
        self.calib = calibration.build(tokenizer, cal.text, samples=cal.samples, seq_len=cal.seq_len)
        self._layer_cls, self._rotary, self._final_norm = self._model_parts()
        self.state = BlockState(Path(state_dir), self._fingerprint())
        self.records: dict[str, dict] = {}
        self.expert_tokens: dict[str, int] = {}
        self._hidden: torch.Tensor | None = None  # inputs of block self._next
        self._next = -1
        self._last_snapshot = time.monotonic()
        self._snapshot_s = float(os.environ.get(SNAPSHOT_ENV, "120"))
        self._seconds = 0.0
        self._dense_checked = False

    # ----------------------------------------------------------------------------------------------- set-up
    def _model_parts(self):
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(self.config)
        inner = getattr(model, "model", None)
        layers = getattr(inner, "layers", None)
        if layers is None or not hasattr(inner, "rotary_emb"):
            raise UnsupportedError(f"{self.config.model_type}: no model.layers / rotary_emb in the transformers model")
        rotary = type(inner.rotary_emb)(self.config).to(self.device)
        return type(layers[0]), rotary, getattr(inner, "norm", None)

    def _fingerprint(self) -> str:
        shapes = {n: list(self.source.shape(n)) for n in sorted(self.source.names())}
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(self.source.dir).glob("*.safetensors"))
        blob = json.dumps({
            "version": __version__, "recipe": self.recipe.to_dict(), "config": self.source.config,
            "shapes": shapes, "files": files, "calibration": self.calib.digest(), "device": self.device.type,
            "min_tokens": MIN_TOKENS, "batch": FORWARD_BATCH,
        }, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    # -------------------------------------------------------------------------------------------- interface
    def quantize_layer(self, layer, weights) -> dict[str, QuantizedLinear]:
        stored = self.state.load_block(layer.index)
        if stored is not None:
            results, records = stored
            self._record(records)
            log.info("block %d: resumed from %s", layer.index, self.state.dir)
            return results
        t0 = time.perf_counter()
        hidden = self._inputs_for(layer.index)
        block, names = self._build_block(layer, weights)
        results, records, nxt = self._quantize_block(block, names, layer, weights, hidden)
        del block, hidden
        self.state.save_block(layer.index, results, records)
        self._hidden, self._next = nxt, layer.index + 1
        if time.monotonic() - self._last_snapshot >= self._snapshot_s:
            self.state.save_hidden(self._next, nxt)
            self._last_snapshot = time.monotonic()
        self._record(records)
        self._seconds += time.perf_counter() - t0
        if os.environ.get(KILL_AFTER_ENV) == str(layer.index):
            log.warning("%s=%d: exiting hard (resume test)", KILL_AFTER_ENV, layer.index)
            os._exit(17)
        return results

    def quantize_head(self, head, weight) -> QuantizedLinear:
        """lm_head, solved against the Hessian of its inputs: the final norm of the last block's outputs."""
        name = head.linear.name
        stored = self.state.load_block(name)
        if stored is not None:
            results, records = stored
            self._record(records)
            log.info("%s: resumed from %s", name, self.state.dir)
            return results[name]
        t0 = time.perf_counter()
        hidden = self._inputs_for(max(self.layers) + 1)
        norm = self._build_final_norm()
        hessian = _Hessian(head.linear.in_features, self.device)
        with torch.no_grad():
            for b in range(0, hidden.shape[0], FORWARD_BATCH):
                hessian.add(norm(hidden[b : b + FORWARD_BATCH].to(self.device)))
        del hidden, norm
        self._hidden, self._next = None, -1
        results, records = self._solve_group([head.linear], {name: hessian}, {f"{name}.weight": weight}, None)
        self.state.save_block(name, results, records)
        self._record(records)
        self._seconds += time.perf_counter() - t0
        return results[name]

    def _build_final_norm(self) -> nn.Module:
        """The model's final norm (model.norm) on the device, fp32, with the checkpoint's weights."""
        import copy

        prefix = "model.norm."
        state = {n.removeprefix(prefix): self.source.get(n).float() for n in self.source.names() if n.startswith(prefix)}
        if self._final_norm is None or not state:
            raise UnsupportedError(f"{self.config.model_type}: no final norm (model.norm) to compute lm_head's inputs; "
                                   "quantize lm_head with --method rtn")
        norm = copy.deepcopy(self._final_norm).to_empty(device=self.device).float().eval()
        missing, unexpected = norm.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UnsupportedError(f"model.norm: checkpoint tensors do not match the transformers norm "
                                   f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        return norm

    def summary(self) -> dict:
        fallbacks = {n: r["fallback"] for n, r in self.records.items() if r.get("fallback")}
        gptq = [r for r in self.records.values() if not r.get("fallback")]
        def mean(key, rows):
            vals = [r[key] for r in rows if key in r]
            return round(sum(vals) / len(vals), 6) if vals else None
        out = {
            "calibration": self.calib.to_dict(),
            "device": self.device.type,
            "options": {**self.recipe.gptq.__dict__, "min_tokens": MIN_TOKENS},
            "linears_gptq": len(gptq),
            "linears_rtn_fallback": len(fallbacks),
            "fallback_rule": f"round-to-nearest for linears with fewer than {MIN_TOKENS} calibration tokens "
                             "(e.g. unused MoE experts) or an unusable Hessian",
            "fallbacks": fallbacks,
            "mean_output_error_gptq": mean("output_error", gptq),
            "per_linear": self.records,
            "solve_seconds": round(self._seconds, 3),
        }
        if self.expert_tokens:
            out["expert_tokens"] = self.expert_tokens
        worst = sorted(((r["output_error"], n) for n, r in self.records.items() if "output_error" in r), reverse=True)[:3]
        log.info("GPTQ: %d linears solved, %d rounded to nearest; mean relative output error %s; worst %s",
                 len(gptq), len(fallbacks), out["mean_output_error_gptq"],
                 ", ".join(f"{n} {e:.4g}" for e, n in worst) or "-")
        return out

    def _record(self, records: dict) -> None:
        self.records.update(records)
        for name, r in records.items():
            if EXPERT_RE.match(f"{name}.weight"):
                self.expert_tokens[name] = r["tokens"]

    # --------------------------------------------------------------------------------------------- blocks
    def _build_block(self, layer, weights) -> tuple[nn.Module, dict[str, nn.Module]]:
        """The decoder layer on the device, fp32, with this block's weights; and checkpoint linear -> module."""
        prefix = f"model.layers.{layer.index}."
        with torch.device("meta"):
            block = self._layer_cls(self.config, layer_idx=layer.index)
        local = {n.removeprefix(prefix): t for n, t in weights.items()}
        renames = self._swap_experts(block, local)
        block = block.to_empty(device=self.device).float().eval()
        state = {_rename(name, renames): tensor.float() for name, tensor in local.items()}
        missing, unexpected = block.load_state_dict(state, strict=False)
        missing += [n for n, _ in block.named_buffers() if n not in state]  # to_empty left them uninitialised
        if missing or unexpected:
            raise UnsupportedError(f"block {layer.index}: checkpoint tensors do not match the transformers layer "
                                   f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        names = {}
        for lin in layer.linears:
            names[lin.name] = block.get_submodule(_rename(lin.name.removeprefix(prefix), renames))
        return block, names

    def _swap_experts(self, block: nn.Module, local: dict[str, torch.Tensor]) -> dict[str, str]:
        """Replace fused 3-D expert modules by PerExpert; returns checkpoint prefix -> module prefix renames."""
        from transformers.activations import ACT2FN

        leaves: dict[str, dict[int, dict[str, str]]] = {}
        for name in local:
            m = EXPERT_RE.match(name)
            if m and m["leaf"] in EXPERT_ROLES:
                leaves.setdefault(m["prefix"], {}).setdefault(int(m["e"]), {})[EXPERT_ROLES[m["leaf"]]] = m["leaf"]
        renames = {}
        fused = [(n, mod) for n, mod in block.named_modules()
                 if n.endswith("experts") and any(p.dim() == 3 for p in mod.parameters(recurse=False))]
        for mod_name, mod in fused:
            parent_name, _, child = mod_name.rpartition(".")
            candidates = [p for p in leaves if p.rpartition(".")[2] == child]
            if len(candidates) != 1:
                raise UnsupportedError(f"{mod_name}: fused experts with no matching per-expert checkpoint tensors")
            ckpt = candidates[0]
            per = leaves[ckpt]
            if any(set(r) != {GATE, UP, DOWN} for r in per.values()):
                raise UnsupportedError(f"{ckpt}: experts need gate, up and down projections")
            sample_gate = local[f"{ckpt}.0.{per[0][GATE]}.weight"]
            act = getattr(mod, "act_fn", None) or ACT2FN[self.config.hidden_act]
            new = PerExpert(per, hidden=sample_gate.shape[1], inter=sample_gate.shape[0], act=act)
            setattr(block.get_submodule(parent_name), child, new)
            renames[f"{ckpt}."] = f"{mod_name}.experts."
            ckpt_parent, mod_parent = ckpt.rpartition(".")[0], parent_name
            if ckpt_parent != mod_parent:
                renames[f"{ckpt_parent}."] = f"{mod_parent}."
        # longest prefixes first so that expert renames win over their parent's
        return dict(sorted(renames.items(), key=lambda kv: -len(kv[0])))

    def _forward(self, block: nn.Module, hidden: torch.Tensor, *, keep: bool, stop: bool = False,
                 plain: bool = False) -> torch.Tensor | None:
        """Run the block (or, ``plain``, any module taking one tensor) over all samples in fixed batches; the
        outputs if ``keep``."""
        seq = hidden.shape[1]
        pos = torch.arange(seq, device=self.device).unsqueeze(0)
        outs = []
        with torch.no_grad():
            for b in range(0, hidden.shape[0], FORWARD_BATCH):
                x = hidden[b : b + FORWARD_BATCH].to(self.device)
                try:
                    if plain:
                        y = block(x)
                    else:
                        cos, sin = self._rotary(x, pos)
                        y = block(x, attention_mask=None, position_ids=pos.expand(x.shape[0], -1),
                                  position_embeddings=(cos, sin))
                except _StageDone:
                    if not stop:
                        raise
                    continue
                if keep:
                    y = y[0] if isinstance(y, tuple) else y
                    outs.append(y.to(hidden.device))
        return torch.cat(outs) if keep else None

    def _run_block(self, block, hidden) -> torch.Tensor:
        return self._forward(block, hidden, keep=True)

    def _quantize_block(self, block, modules, layer, weights, hidden):
        """(results, records, next block's inputs)."""
        results, records = {}, {}
        bar = tqdm(total=len(layer.linears), desc=f"block {layer.index}", unit="linear", leave=False,
                   disable=not self.progress)

        def solve_stage(stage, hessians):
            for group in _shared_groups(stage, hessians):
                res, rec = self._solve_group(group, hessians, weights, modules)
                results.update(res)
                records.update(rec)
                bar.update(len(group))

        if self._dense(block, layer):
            nxt = self._dense_pass(block, modules, layer, weights, hidden, results, solve_stage)
            if not self._dense_checked:
                self._check_dense(block, hidden, nxt)
        else:
            stages = layer.stages() if self.opts.true_sequential else [layer.linears]
            for stage in stages:
                solve_stage(stage, self._capture(block, {lin.name: modules[lin.name] for lin in stage}, hidden))
            nxt = self._run_block(block, hidden)
        bar.close()
        return results, records, nxt

    # Dense pre-norm decoder layers (these model types in transformers): h_mid = h + o_proj(attn(norm1(h))) and
    # out = h_mid + down_proj(mlp_inner(norm2(h_mid))). The attention then runs once per block: quantizing o_proj
    # changes h_mid by x_o @ (Wo_q - Wo)^T, and likewise down_proj changes the output by x_down @ (Wd_q - Wd)^T,
    # both computed from inputs captured in the pass that collected the Hessian. Replays after a resume go through
    # the same function (without solving), so they produce the same activations bit for bit.
    DENSE = ("llama", "mistral", "qwen2", "qwen3")

    def _dense(self, block, layer) -> bool:
        if self.config.model_type not in self.DENSE or not self.opts.true_sequential:
            return False
        if not all(hasattr(block, a) for a in ("mlp", "post_attention_layernorm")):
            return False
        leaves = [sorted(lin.name.rsplit(".", 1)[1] for lin in st) for st in layer.stages()]
        return leaves == [["k_proj", "q_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]

    def _dense_pass(self, block, modules, layer, weights, hidden, results, solve_stage=None) -> torch.Tensor:
        """The next block's inputs; with ``solve_stage`` the stages are solved on the way (true-sequential),
        without it ``results`` holds them already and q/k/v and gate/up carry their dequantized weights."""
        qkv, (o,), gate_up, (down,) = layer.stages()
        if solve_stage is not None:
            solve_stage(qkv, self._capture(block, {lin.name: modules[lin.name] for lin in qkv}, hidden))
        h_o = _Hessian(o.in_features, self.device) if solve_stage is not None else None
        h_mid, x_o = self._attn_pass(block, modules[o.name], hidden, h_o)
        if solve_stage is not None:
            solve_stage([o], {o.name: h_o})
        h_mid = self._corrected(h_mid, x_o, results[o.name], weights[f"{o.name}.weight"])
        del x_o
        x_mlp = self._forward(block.post_attention_layernorm, h_mid, keep=True, plain=True)
        if solve_stage is not None:
            mods = {lin.name: modules[lin.name] for lin in gate_up}
            solve_stage(gate_up, self._capture(block.mlp, mods, x_mlp, plain=True))
        h_down = _Hessian(down.in_features, self.device) if solve_stage is not None else None
        m_out, x_down = self._mlp_pass(block, x_mlp, modules[down.name], h_down)
        if solve_stage is not None:
            solve_stage([down], {down.name: h_down})
        return self._corrected(h_mid.add_(m_out), x_down, results[down.name], weights[f"{down.name}.weight"])

    def _attn_pass(self, block, o_proj: nn.Module, hidden, hessian: "_Hessian | None"):
        """One pass up to the attention output: the residual stream h + o_proj(x_o) and o_proj's inputs x_o."""
        h_mid, xs = [], []

        def at_o(module, args, output):
            xs.append(args[0].to(hidden.device))
            if hessian is not None:
                hessian.add(args[0])

        def at_norm(module, args):
            h_mid.append(args[0].to(hidden.device))
            raise _StageDone

        handles = [o_proj.register_forward_hook(at_o),
                   block.post_attention_layernorm.register_forward_pre_hook(at_norm)]
        try:
            self._forward(block, hidden, keep=False, stop=True)
        finally:
            for handle in handles:
                handle.remove()
        return torch.cat(h_mid), torch.cat(xs)

    def _mlp_pass(self, block, x_mlp, down: nn.Module, hessian: "_Hessian | None"):
        """The MLP over every sample: its outputs and down_proj's inputs (accumulated into ``hessian`` if given)."""
        xs = []

        def at_down(module, args, output):
            xs.append(args[0].to(x_mlp.device))
            if hessian is not None:
                hessian.add(args[0])

        handle = down.register_forward_hook(at_down)
        try:
            m_out = self._forward(block.mlp, x_mlp, keep=True, plain=True)
        finally:
            handle.remove()
        return m_out, torch.cat(xs)

    def _corrected(self, base, x, ql: QuantizedLinear, weight) -> torch.Tensor:
        """base + x @ (W_q - W)^T, batch by batch (in place on ``base``)."""
        delta = ql.dequantize().to(self.device) - weight.to(self.device, torch.float32)  # [N, K]
        for b in range(0, base.shape[0], FORWARD_BATCH):
            part = base[b : b + FORWARD_BATCH].to(self.device)
            part += x[b : b + FORWARD_BATCH].to(self.device) @ delta.T
            base[b : b + FORWARD_BATCH] = part.to(base.device)
        return base

    def _check_dense(self, block, hidden, nxt) -> None:
        """Once per run: the shortcut output must equal the quantized block's own forward (first batch)."""
        ref = self._forward(block, hidden[:FORWARD_BATCH], keep=True)
        got = nxt[:FORWARD_BATCH].to(ref.device)
        err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        if not err < 1e-4:
            raise RuntimeError(f"{self.config.model_type}: the decoder layer is not the pre-norm layout GPTQ assumes "
                               f"(relative difference {err:.2e}); please report this")
        self._dense_checked = True

    def _capture(self, block, modules: dict[str, nn.Module], hidden, *, plain: bool = False) -> dict[str, "_Hessian"]:
        """Mean x x^T of each linear's inputs over the calibration set; linears fed the same tensor share one."""
        hessians: dict[str, _Hessian] = {}
        last: dict[str, object] = {"x": None, "h": None}
        seen: set[str] = set()
        expert_stage = any(EXPERT_RE.match(f"{n}.weight") for n in modules)

        def hook(name):
            def fn(module, inputs, output):
                x = inputs[0]
                if x is last["x"]:  # same tensor as the previous linear (q/k/v, gate/up): share its Hessian
                    hessians.setdefault(name, last["h"])
                if hessians.get(name) is not last["h"] or x is not last["x"]:
                    h = hessians.setdefault(name, _Hessian(module.in_features, self.device))
                    h.add(x)
                    last["x"], last["h"] = x, h
                seen.add(name)
                if not expert_stage and len(seen) == len(modules):
                    raise _StageDone
            return fn

        handles = [mod.register_forward_hook(hook(name)) for name, mod in modules.items()]
        try:
            for b in range(0, hidden.shape[0], FORWARD_BATCH):
                seen.clear()
                last["x"] = last["h"] = None
                self._forward(block, hidden[b : b + FORWARD_BATCH], keep=False, stop=True, plain=plain)
        finally:
            for handle in handles:
                handle.remove()
        for name in modules:
            hessians.setdefault(name, _Hessian(modules[name].in_features, self.device))
        return hessians

    def _solve_group(self, group, hessians, weights, modules):
        """Solve linears sharing one Hessian as one stacked weight; RTN fallback where the rule says so. The
        dequantized weights are written into ``modules`` (if given), so that later stages see them."""
        h = hessians[group[0].name]
        results, records = {}, {}
        ws = [weights[f"{lin.name}.weight"].to(self.device, torch.float32) for lin in group]
        grid_opts = dict(bits=self.recipe.bits, group_size=self.recipe.group_size, sym=self.recipe.sym,
                         scale_dtype=self.scale_dtype, min_zero=self.min_zero)
        fallback = None
        if h.tokens < MIN_TOKENS:
            fallback = f"{h.tokens} calibration tokens < {MIN_TOKENS}"
        else:
            hm = h.mean()
            try:
                sol = solve(torch.cat(ws), hm, **grid_opts, damp_percent=self.opts.damp_percent,
                            block_size=self.opts.block_size, act_order=self.opts.act_order,
                            static_groups=self.opts.static_groups)
            except NumericalError as e:
                fallback = str(e)
        row = 0
        deq_all = sol.qlinear.dequantize() if fallback is None else None
        for lin, w in zip(group, ws):
            bias = weights.get(f"{lin.name}.bias")
            if fallback is None:
                ql = _rows(sol.qlinear, row, row + w.shape[0], bias)
                deq = deq_all[row : row + w.shape[0]]
                records[lin.name] = {
                    "tokens": h.tokens, "damp": sol.damp, "dead_inputs": sol.dead_inputs,
                    "loss": round(sol.loss, 6) if len(group) == 1 else None,
                    "output_error": round(output_error(w, deq, hm), 6),
                }
            else:
                log.warning("%s: %s; rounding to nearest instead", lin.name, fallback)
                nearest = rtn.quantize(w, **grid_opts)
                ql = _rows(nearest, 0, w.shape[0], bias)
                deq = nearest.dequantize()
                records[lin.name] = {"tokens": h.tokens, "fallback": f"rtn ({fallback})"}
            row += w.shape[0]
            if modules is not None:
                modules[lin.name].weight.data.copy_(deq)
            results[lin.name] = ql
        return results, records

    # ------------------------------------------------------------------------------------------ activations
    def _embed(self) -> torch.Tensor:
        emb = self.source.get("model.embed_tokens.weight")  # a view of the shard's map: only the rows used are read
        hidden = nn.functional.embedding(self.calib.tokens, emb).float()
        return hidden.to(self.device) if self._fits(hidden) else hidden

    def _fits(self, hidden: torch.Tensor) -> bool:
        """Keep the carried activations on the GPU when they take under a quarter of its free memory."""
        if self.device.type != "cuda":
            return True
        free, _ = torch.cuda.mem_get_info(self.device)
        return hidden.numel() * hidden.element_size() * 3 < free // 4

    def _inputs_for(self, index: int) -> torch.Tensor:
        if self._next == index and self._hidden is not None:
            return self._hidden
        start, hidden = self.state.load_hidden(index)
        if hidden is None:
            start, hidden = min(self.layers), self._embed()
        else:
            hidden = hidden.to(self.device) if self._fits(hidden) else hidden
        for i in range(start, index):
            layer = self.layers[i]
            stored = self.state.load_block(i)
            if stored is None:
                raise RuntimeError(f"block {i}: no saved result to replay from {self.state.dir}")
            names = {n: self.source.get(n) for n in layer.kept}
            names.update({f"{lin.name}.weight": self.source.get(f"{lin.name}.weight") for lin in layer.linears})
            names.update({f"{lin.name}.bias": self.source.get(f"{lin.name}.bias") for lin in layer.linears if lin.has_bias})
            block, modules = self._build_block(layer, names)
            log.info("block %d: replaying the saved quantized block to rebuild activations", i)
            if self._dense(block, layer):
                for st in (layer.stages()[0], layer.stages()[2]):  # q/k/v, gate/up; o and down stay as they were
                    for lin in st:
                        modules[lin.name].weight.data.copy_(stored[0][lin.name].dequantize().to(self.device))
                hidden = self._dense_pass(block, modules, layer, names, hidden, stored[0])
            else:
                for name, ql in stored[0].items():
                    modules[name].weight.data.copy_(ql.dequantize().to(self.device))
                hidden = self._run_block(block, hidden)
        return hidden


class _Hessian:
    """Running sum of x x^T (fp32) and the number of rows (tokens) it came from."""

    def __init__(self, k: int, device: torch.device):
        self.sum = torch.zeros(k, k, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.sum.addmm_(x.T, x)
        self.tokens += x.shape[0]

    def mean(self) -> torch.Tensor:
        return self.sum / max(self.tokens, 1)


def _rename(name: str, renames: dict[str, str]) -> str:
    """Checkpoint name inside a block -> module name (the longest matching prefix wins)."""
    for ckpt, mod in renames.items():
        if name.startswith(ckpt):
            return mod + name[len(ckpt):]
    return name


def _shared_groups(stage, hessians) -> list[list]:
    """Linears of a stage grouped by the Hessian object they share, in stage order."""
    groups: dict[int, list] = {}
    for lin in stage:
        groups.setdefault(id(hessians[lin.name]), []).append(lin)
    return list(groups.values())


def _rows(ql: QuantizedLinear, start: int, stop: int, bias) -> QuantizedLinear:
    """Rows start:stop of a (stacked) quantized linear, on the CPU, with its own bias."""
    return QuantizedLinear(
        codes=ql.codes[start:stop].cpu().contiguous(), scales=ql.scales[:, start:stop].cpu().contiguous(),
        zeros=ql.zeros[:, start:stop].cpu().contiguous(), g_idx=ql.g_idx.cpu().clone(), bits=ql.bits,
        group_size=ql.group_size, sym=ql.sym, bias=bias,
    )


class BlockState:
    """Per-block results and activation snapshots under ``directory``, valid for one fingerprint."""

    def __init__(self, directory: Path, fingerprint: str):
        self.dir = directory
        stamp = directory / "fingerprint"
        if directory.is_dir() and (not stamp.is_file() or stamp.read_text() != fingerprint):
            log.info("%s: state from another model/recipe/calibration; starting afresh", directory)
            for f in directory.iterdir():
                if f.is_file():
                    f.unlink()
        directory.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)

    def _atomic_save(self, obj, path: Path) -> None:
        tmp = path.with_suffix(".partial")
        torch.save(obj, tmp)
        os.replace(tmp, path)

    def _path(self, index: int | str) -> Path:
        """block-00003.pt for decoder block 3; lm_head.pt for the linear quantized after the blocks."""
        return self.dir / (f"block-{index:05d}.pt" if isinstance(index, int) else f"{index}.pt")

    def save_block(self, index: int | str, results: dict[str, QuantizedLinear], records: dict) -> None:
        blob = {name: {"codes": q.codes, "scales": q.scales, "zeros": q.zeros, "g_idx": q.g_idx, "bits": q.bits,
                       "group_size": q.group_size, "sym": q.sym, "bias": q.bias} for name, q in results.items()}
        self._atomic_save({"linears": blob, "records": records}, self._path(index))

    def load_block(self, index: int | str):
        path = self._path(index)
        if not path.is_file():
            return None
        blob = torch.load(path, weights_only=True)
        results = {name: QuantizedLinear(**fields) for name, fields in blob["linears"].items()}
        return results, blob["records"]

    def save_hidden(self, index: int, hidden: torch.Tensor) -> None:
        """Inputs of block ``index``; only the newest snapshot is kept."""
        path = self.dir / f"hidden-{index:05d}.pt"
        self._atomic_save(hidden.cpu(), path)
        for old in self.dir.glob("hidden-*.pt"):
            if old != path:
                old.unlink()

    def load_hidden(self, index: int) -> tuple[int, torch.Tensor | None]:
        """The newest snapshot of inputs of a block <= index: (block, activations) or (0, None)."""
        best = None
        for path in self.dir.glob("hidden-*.pt"):
            i = int(path.stem.split("-")[1])
            if i <= index and (best is None or i > best[0]):
                best = (i, path)
        if best is None:
            return 0, None
        return best[0], torch.load(best[1], weights_only=True)
