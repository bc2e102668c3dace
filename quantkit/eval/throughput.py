"""Throughput: prefill and decode tokens/s of a causal LM at several batch sizes, the quantized model and its bf16
baseline measured in the same run, one after the other on the same inputs.

How (docs/benchmarking.md): a static KV cache (transformers' StaticCache, its layers writing at the runner's position:
SHARED_CACHE_POSITION) of prompt_len + gen_len tokens; the
prefill (prompt_len tokens per sequence, logits of the last position only, as generation does) and one greedy
decode step are each captured in a CUDA graph, so Python and launch overhead do not hide the kernels; a decode
step feeds its argmax back as the next input (quantkit.eval.greedy: in two stages, or one launch) and advances the
position on the device. Timing with CUDA events:
per repeat one prefill replay, then gen_len decode replays. Warm-up repeats are dropped; the median of the
rest and its spread (min .. max) are reported. Attention goes through transformers' SDPA with an explicit mask
over the whole static cache, the same for both models; grouped-query decode steps read each cached key/value head
once instead of repeating it per query head (quantkit.eval.attention), on a GPU by default through quantkit's
split-KV decoding kernel (``decode_attention``: quantkit.eval.decode_attention). Unless ``fuse`` is off, both models
run their q/k/v and gate/up projections as one linear each, as serving engines do (quantkit.eval.fuse; in place).

Before timing, both models are checked on the run's own prompt: the quantized logits against the baseline's
(KL divergence, top-1 agreement, relative error), and the graph-replayed decode against a plain forward pass.

With ``compile`` (--compile), the decode step is torch.compile'd first (inductor fuses transformers' small ops:
norms, rotary, cache update; dynamic shapes, so one compile serves the batch sizes the kernels' dispatch treats alike)
and then captured the same way; every quantized linear is one opaque custom op to the compiler, so the kernels run as
they are (where a layer runs the warp-specialized kernel, the op takes that kernel's image of x made by inductor,
fused into the kernel that makes x where it can, instead of the kernel's own packing launch: docs/kernel.md item 39).
The baseline is compiled the same way. Prefill stays uncompiled (it is matmul-bound).

On a CPU the same path runs eagerly (no graphs, wall-clock time): useful to test, but speed figures there say
nothing about the kernels, and the result says so.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import platform
import shutil
import statistics
import subprocess
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm import tqdm

from quantkit.errors import InputError
from quantkit.eval import decode_attention, fuse, greedy, ppl, prefetch
from quantkit.eval.attention import (DECODE_KERNELS, decode_kernel_of, grouped_decode_attention, rope_in_attention_of,
                                     rope_in_qkv_of)
from quantkit.eval.fuse import fuse_projections
from quantkit.eval.greedy import greedy_into
from quantkit.kernels import build as kernel_build
from quantkit.kernels import ops as kernel_ops
from quantkit.kernels.packing import PackedLinear

log = logging.getLogger(__name__)

CPU_NOTE = "measured on a CPU: speed figures are not meaningful there (the W4A16 kernels run on GPUs)"
# A broken kernel or cache gives errors of order 1; bf16 rounding over a deep model stays well under these.
SAME_WEIGHTS_MAX_REL_ERROR = 0.1
DECODE_MAX_REL_ERROR = 0.1


@dataclass(frozen=True)
class Settings:
    batches: tuple[int, ...] = (1, 8, 32)
    prompt_len: int = 512
    gen_len: int = 128
    warmup: int = 1
    repeats: int = 5
    cuda_graphs: bool = True
    compile: bool = False  # torch.compile the decode step (fuses the ops around the linears), then graph-capture it
    compile_backend: str = "inductor"  # "eager" traces without code generation (tests)
    fuse: bool = True  # q/k/v and gate/up projections as one linear each, in both models (quantkit.eval.fuse)
    decode_attention: str = "split"  # a decode step's attention on a GPU, both models (quantkit.eval.attention)
    seed: int = 0

    def validate(self) -> "Settings":
        if not self.batches or any(b < 1 for b in self.batches):
            raise InputError(f"--batch needs positive batch sizes, got {self.batches}")
        if self.prompt_len < 1 or self.gen_len < 1:
            raise InputError(f"--prompt-len and --gen-len must be >= 1, got {self.prompt_len} and {self.gen_len}")
        if self.repeats < 1 or self.warmup < 0:
            raise InputError(f"--repeats must be >= 1 and --warmup >= 0, got {self.repeats} and {self.warmup}")
        if self.decode_attention not in DECODE_KERNELS:
            raise InputError(f"--decode-attention must be one of {', '.join(DECODE_KERNELS)}, "
                             f"got {self.decode_attention!r}")
        return self


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise InputError(f"--batch takes comma-separated integers such as 1,8,32, got {text!r}") from None
    return Settings(batches=values).validate().batches


def _driver_version() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def environment(device: torch.device | str, dtype: torch.dtype) -> dict:
    """What the numbers were measured on: device name, dtype, torch / CUDA / driver / transformers versions."""
    import transformers

    from quantkit import __version__

    device = torch.device(device)
    on_gpu = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if on_gpu else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
        "device_type": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if on_gpu else None,
        "hip": torch.version.hip if on_gpu else None,
        "driver": _driver_version() if on_gpu else None,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "quantkit": __version__,
    }


def _forward_kwargs(model, cache) -> dict:
    """The cache argument under the name this transformers version uses (``cache`` from 5.2x, else
    ``past_key_values``)."""
    params = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


_OPAQUE: dict[int, nn.Module] = {}
# Whether compiled steps hand the warp-specialized kernel its image of x made by inductor (_Opaque), read as a step is
# traced; QUANTKIT_COMPILED_X_IMAGE=0 turns it off (bench/profile_decode.py --x-image both measures both in one run)
COMPILED_X_IMAGE = os.environ.get("QUANTKIT_COMPILED_X_IMAGE", "1") != "0"

# Each op below takes its output's width (width) as an argument, so that its fake's shape is the graph's own and not a
# lookup in _OPAQUE: layer numbers start at 0 in every model, and inductor's on-disk cache of compiled graphs, keyed on
# the graph and its inputs, would hand a graph of one op alone (a graph break on each side) to another model whose x
# has the same shape, with the first model's width (tests/test_eval.py's
# test_compiled_ops_of_two_models_of_one_input_width_keep_their_own_output_widths).


@torch.library.custom_op("quantkit_eval::quantized_linear", mutates_args=())
def _quantized_linear(x: torch.Tensor, layer: int, rows: bool, width: int) -> torch.Tensor:
    return _OPAQUE[layer].forward_rows(x) if rows else _OPAQUE[layer](x)


@_quantized_linear.register_fake
def _(x: torch.Tensor, layer: int, rows: bool, width: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], width)


def _rows(module: nn.Module) -> int:
    """The output features of a quantized linear's own product (a gated pair's: both halves, before its SiLU and
    multiply)."""
    packed = getattr(module, "packed", None)
    return packed.out_features if isinstance(packed, PackedLinear) else module.out_features


@torch.library.custom_op("quantkit_eval::quantized_linear_image", mutates_args=())
def _quantized_linear_image(image: torch.Tensor, layer: int, glu: bool, width: int) -> torch.Tensor:
    inner = _OPAQUE[layer]
    y = kernel_ops.w4a16_linear_image(image, inner.packed, inner.bias, glu=glu)
    inner.warm_next(image.shape[1], image.dtype)
    return y


@_quantized_linear_image.register_fake
def _(image: torch.Tensor, layer: int, glu: bool, width: int) -> torch.Tensor:
    return image.new_empty(image.shape[1], width)


# ss (kernels.ops.Fold.ss): read, with rms; the op that fills it (with residual) is quantized_linear_folded_into,
# whose ss is a tensor (inductor does not lower a mutated argument that may be None)
@torch.library.custom_op("quantkit_eval::quantized_linear_folded", mutates_args=())
def _quantized_linear_folded(x: torch.Tensor, rms: torch.Tensor | None, eps: float, residual: torch.Tensor | None,
                             next_w: torch.Tensor | None, ss: torch.Tensor | None, layer: int,
                             width: int) -> torch.Tensor:
    return _OPAQUE[layer].folded(x, kernel_ops.Fold(rms, eps, residual, next_w, ss))


@_quantized_linear_folded.register_fake
def _folded_fake(x, rms, eps, residual, next_w, ss, layer, width):
    out = x.new_empty(*x.shape[:-1], width)
    return out if next_w is None else out.new_empty(2, *out.shape)


@torch.library.custom_op("quantkit_eval::quantized_linear_folded_into", mutates_args=("ss",))
def _quantized_linear_folded_into(x: torch.Tensor, residual: torch.Tensor, next_w: torch.Tensor | None,
                                  ss: torch.Tensor, layer: int, width: int) -> torch.Tensor:
    return _OPAQUE[layer].folded(x, kernel_ops.Fold(None, 0.0, residual, next_w, ss))


@_quantized_linear_folded_into.register_fake
def _(x, residual, next_w, ss, layer, width):
    return _folded_fake(x, None, 0.0, residual, next_w, None, layer, width)


@torch.library.custom_op("quantkit_eval::quantized_mlp", mutates_args=())
def _quantized_mlp(x: torch.Tensor, pair: int, down: int, width: int) -> torch.Tensor:
    return _OPAQUE[pair].mlp(x, _OPAQUE[down])


@_quantized_mlp.register_fake
def _(x: torch.Tensor, pair: int, down: int, width: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], width)


# width: q's, heads * head_dim
@torch.library.custom_op("quantkit_eval::quantized_rope_qkv", mutates_args=("key_cache", "value_cache"))
def _quantized_rope_qkv(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_cache: torch.Tensor,
                        value_cache: torch.Tensor, position: torch.Tensor, layer: int, width: int) -> torch.Tensor:
    return _OPAQUE[layer].rope_qkv(x, cos, sin, key_cache, value_cache, position)


@_quantized_rope_qkv.register_fake
def _(x, cos, sin, key_cache, value_cache, position, layer, width):
    return x.new_empty(*x.shape[:-1], width)


class _Opaque(nn.Module):
    """A quantized linear that torch.compile sees as one custom op (it runs the module as it is). Where the module
    is a W4A16Linear whose layer runs the warp-specialized kernel at the step's rows (x_image_ready, wgmma_ws), a
    compiled step makes the kernel's image of x in torch ops (kernels.ops.x_image), which inductor fuses into the
    kernel that makes x where it can (the MLP's activation; after the norm's reduction it is a kernel of its own),
    and the op reads it: the kernel's own packing of x, a launch before each such layer, is left out. A gated pair
    (W4A16Linear with glu) whose kernel at the step's rows cannot apply the SiLU and multiply itself (kernels.ops.glu_at:
    the decode kernel can, the warp-specialized one with GLU_WS) gives the op its interleaved sums and the SiLU and
    multiply in torch ops (kernels.ops.glu_interleaved), which inductor fuses. A fused q/k/v in rope order (W4A16Linear
    with rope) gives the op its rows in that order and the gather that puts them back in torch ops, which inductor
    fuses into the kernel that reads them (the rotary embedding's, at steps where the layer's own epilogue does not
    run it)."""

    def __init__(self, inner: nn.Module, layer: int):
        super().__init__()
        self.inner, self.layer, self.out_features = inner, layer, inner.out_features
        self.rows = _rows(inner)
        self.glu = getattr(inner, "glu", False)
        self.rope = getattr(inner, "rope", None)  # a fused q/k/v in rope order (W4A16Linear.concat_rope)
        # the most rows at which its kernel runs the rotary epilogue (from 1 up; 0: none), worked out here so that a
        # compiled step decides it without tracing into the dispatch
        self.rope_rows = max((m for m in range(1, kernel_ops.ROPE_MAX_M + 1)
                              if self.rope and inner.rope_in_kernel_at(m)), default=0)
        packed = getattr(inner, "packed", None)
        on_kernels = isinstance(packed, PackedLinear) and getattr(inner, "backend", None) in ("auto", "kernel")
        self.image = on_kernels and kernel_ops.x_image_ready(packed)
        # a gated pair on the kernels: whether its GPU has the wgmma kernels (kernels.ops.glu_at), else None
        ready = self.glu and on_kernels and kernel_ops.glu_ready(packed)
        self.glu_wgmma = kernel_ops.has_wgmma(packed.device) if ready else None
        self.sms = kernel_ops.sm_count(packed.device) if self.image or ready else 0

    def fuses_with(self, down: nn.Module) -> bool:
        """The module's fuses_with (a gated pair and its down projection in one launch) for another opaque linear."""
        inner = getattr(self.inner, "fuses_with", None)
        return isinstance(down, _Opaque) and inner is not None and inner(down.inner)

    def fuses_at(self, rows: int) -> bool:
        """The module's fuses_at (at which rows mlp() is one launch)."""
        return self.inner.fuses_at(rows)

    def mlp(self, x: torch.Tensor, down: "_Opaque") -> torch.Tensor:
        """The module's mlp(x, down) as one custom op."""
        return torch.ops.quantkit_eval.quantized_mlp(x, self.layer, down.layer, down.out_features)

    def folded(self, x: torch.Tensor, fold: kernel_ops.Fold) -> torch.Tensor:
        """The module's folded() as one custom op (a decoder layer's residual add and RMSNorm folded in)."""
        if fold.ss is not None and fold.residual is not None:  # ss filled
            return torch.ops.quantkit_eval.quantized_linear_folded_into(x, fold.residual, fold.next_w, fold.ss,
                                                                        self.layer, self.out_features)
        return torch.ops.quantkit_eval.quantized_linear_folded(x, fold.rms, fold.eps, fold.residual, fold.next_w,
                                                               fold.ss, self.layer, self.out_features)

    def rope_in_kernel_at(self, rows: int) -> bool:
        """The module's rope_in_kernel_at (its rows worked out when wrapped: kernels.ops.rope_at holds from 1 up to a
        number of rows or not at all)."""
        return 1 <= rows <= self.rope_rows

    def rope_qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_cache: torch.Tensor,
                 value_cache: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """The module's rope_qkv (a decode step's q, the caches written) as one custom op."""
        return torch.ops.quantkit_eval.quantized_rope_qkv(x, cos, sin, key_cache, value_cache, position, self.layer,
                                                          self.rope[0] * self.rope[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = x.shape[-1]
        m = x.numel() // k
        if (COMPILED_X_IMAGE and self.image and torch.compiler.is_compiling()
                and kernel_ops.wgmma_ws(m, self.rows, k, self.sms)):
            # a gated pair whose warp-specialized kernel applies the SiLU and multiply itself (kernels.ops.GLU_WS)
            whole = self.glu and kernel_ops.glu_at(m, self.rows, k, wgmma=True, sms=self.sms)
            width = self.out_features if whole else self.rows
            y = torch.ops.quantkit_eval.quantized_linear_image(kernel_ops.x_image(x), self.layer, whole, width)
            y = y.reshape(*x.shape[:-1], width)
            if whole:
                return y
        elif self.glu and not (self.glu_wgmma is not None
                               and kernel_ops.glu_at(m, self.rows, k, wgmma=self.glu_wgmma, sms=self.sms)):
            y = torch.ops.quantkit_eval.quantized_linear(x, self.layer, True, self.rows)
        elif self.rope is None:
            return torch.ops.quantkit_eval.quantized_linear(x, self.layer, False, self.out_features)
        else:
            y = torch.ops.quantkit_eval.quantized_linear(x, self.layer, True, self.rows)
        if self.rope is not None:  # rows in rope order, put back in torch ops that inductor fuses into their reader
            return y.index_select(-1, self.inner.natural)
        return kernel_ops.glu_interleaved(y) if self.glu else y


@contextmanager
def opaque_quantized_linears(model: nn.Module):
    """Within the block, every quantized linear of ``model`` (any non-nn.Linear module with in/out_features,
    i.e. W4A16Linear or reference.QuantLinear) is wrapped as an opaque op; restored afterwards."""
    swapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) or not hasattr(module, "out_features") or not hasattr(module, "in_features"):
            continue
        layer = max(_OPAQUE, default=-1) + 1  # small and in module order: the same graph, run after run
        _OPAQUE[layer] = module
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, _Opaque(module, layer))
        swapped.append((owner, child, module))
    try:
        yield model
    finally:
        for owner, child, module in swapped:
            _OPAQUE.pop(getattr(owner, child).layer, None)
            setattr(owner, child, module)


# Whether inductor merges a compiled step's independent kernels into combo kernels (its experimental
# ``combo_kernels``: a layer's rotary of q, rotary of k with its cache write and the v cache write become one launch
# instead of three of 1.2-1.9 us each). On for both models; QUANTKIT_COMBO_KERNELS=0 turns it off. On the H100
# (docs/kernel.md item 51) it took the compiled eval's decode from 2.19x / 1.98x / 1.48x to 2.25x / 2.01x / 1.43x
# at batch 1 / 8 / 32, twice alike on one machine.
COMBO_KERNELS = os.environ.get("QUANTKIT_COMBO_KERNELS", "1") != "0"


# Whether the static cache's layers write each step's keys and values at the runner's position (Runner.pos, one tensor
# for every layer) rather than at a position each layer counts itself: transformers 5's StaticLayer advances its own
# counter every step (cumulative_length.add_), which the compiled step ran as 31 one-thread kernels a step on
# Llama-3-8B, in both models (about 1.2 us each; triton_poi_fused_add_copy_ in bench/results/
# decode_profile_h100_0d70d44.json). On; QUANTKIT_SHARED_CACHE_POSITION=0 keeps transformers' counters.
SHARED_CACHE_POSITION = os.environ.get("QUANTKIT_SHARED_CACHE_POSITION", "1") != "0"


@functools.lru_cache(maxsize=None)
def _at_position_layer():
    """A transformers static cache layer that writes at a position it is given (``position``, a tensor of one
    element the caller advances), with no counter of its own; None where this transformers' layers keep no such
    counter. One class for every cache, so that compiled steps' guards on it hold."""
    from transformers.cache_utils import StaticLayer

    if not hasattr(StaticLayer(max_cache_len=1), "cumulative_length"):
        return None

    class AtPosition(StaticLayer):
        def __init__(self, max_cache_len: int, position: torch.Tensor):
            super().__init__(max_cache_len=max_cache_len)
            self.position = position

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            where = torch.arange(key_states.shape[-2], device=self.device) + self.position
            self.keys.index_copy_(2, where, key_states)
            self.values.index_copy_(2, where, value_states)
            return self.keys, self.values

        def get_seq_length(self):
            return self.position[0] if self.is_initialized else 0

    return AtPosition


def share_cache_position(cache, position: torch.Tensor) -> int:
    """cache's plain static layers (transformers' StaticLayer, not its sliding-window ones) replaced by layers that
    write at ``position``; how many were replaced (0 where this transformers' layers take the position from the model
    instead)."""
    from transformers.cache_utils import StaticLayer

    layer_type = _at_position_layer()
    if layer_type is None:
        return 0
    replaced = 0
    for i, layer in enumerate(cache.layers):
        if type(layer) is StaticLayer and not layer.is_initialized:
            cache.layers[i] = layer_type(layer.max_cache_len, position)
            replaced += 1
    return replaced


def inductor_pdl() -> bool:
    """Whether the compiled decode steps' kernels are programmatic launches (fuse.INDUCTOR_PDL, asked for, and an
    inductor that has its triton.enable_pdl; it generates them on Hopper and later GPUs only)."""
    from torch._inductor import config as inductor_config

    return fuse.INDUCTOR_PDL and hasattr(inductor_config.triton, "enable_pdl")


def _compiled(model: nn.Module, backend: str, combo_kernels: bool | None = None):
    """model torch.compile'd for the decode step; combo_kernels (default COMBO_KERNELS) and inductor_pdl() only
    reach inductor."""
    cfg = torch._dynamo.config
    for knob in ("cache_size_limit", "recompile_limit"):
        if hasattr(cfg, knob):
            setattr(cfg, knob, max(getattr(cfg, knob), 64))
    combo = COMBO_KERNELS if combo_kernels is None else combo_kernels
    options = {}
    if backend == "inductor" and combo:
        options["combo_kernels"] = True
    if backend == "inductor" and inductor_pdl():
        options["triton.enable_pdl"] = True
    return torch.compile(model, dynamic=True, backend=backend, options=options or None)


class Runner:
    """One model, one batch size: a static cache, a prefill step and a decode step, graph-captured on a GPU."""

    def __init__(self, model, *, batch: int, settings: Settings, prompt: torch.Tensor, decode_model=None):
        from transformers import StaticCache

        self.model, self.batch, self.s = model, batch, settings
        self.decode_model = model if decode_model is None else decode_model  # a torch.compile'd model for the decode step (--compile)
        device = prompt.device
        p, total = settings.prompt_len, settings.prompt_len + settings.gen_len
        self.cache = StaticCache(config=model.config, max_cache_len=total)
        self.kwargs = _forward_kwargs(model, self.cache)
        self.prompt = prompt
        self.prefill_pos = torch.arange(p, device=device).expand(batch, p)
        self.prefill_mask = (torch.arange(total, device=device)[None, :] <= torch.arange(p, device=device)[:, None])
        self.prefill_mask = self.prefill_mask.expand(batch, 1, p, total).contiguous()
        self.slots = torch.arange(total, device=device)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.full((1,), p, dtype=torch.long, device=device)
        # the cache's layers write at pos (0 during the prefill), unless transformers' own counters are kept
        self.shared_cache_layers = share_cache_position(self.cache, self.pos) if SHARED_CACHE_POSITION else 0
        self.logits: torch.Tensor | None = None
        self._captured_logits: torch.Tensor | None = None
        self.first_step_logits: torch.Tensor | None = None
        self.graphs: dict[str, torch.cuda.CUDAGraph] = {}
        self.use_graphs = settings.cuda_graphs and device.type == "cuda"

    # --- the two steps, written so that they can be captured: no host sync, every input a static tensor
    def _prefill(self) -> None:
        if self.shared_cache_layers:
            self.pos.zero_()  # the prompt's keys and values from position 0
        out = self.model(input_ids=self.prompt, attention_mask=self.prefill_mask, position_ids=self.prefill_pos,
                         use_cache=True, logits_to_keep=1, **self.kwargs)
        self.logits = out.logits
        greedy_into(out.logits[:, -1], self.token)
        self.pos.fill_(self.s.prompt_len)

    def _decode(self) -> None:
        mask = (self.slots <= self.pos).view(1, 1, 1, -1).expand(self.batch, 1, 1, -1)
        out = self.decode_model(input_ids=self.token, attention_mask=mask,
                                position_ids=self.pos.view(1, 1).expand(self.batch, 1), use_cache=True, logits_to_keep=1,
                                **self.kwargs)
        self.logits = out.logits
        greedy_into(out.logits[:, -1], self.token)
        self.pos.add_(1)

    def reset(self) -> None:
        self.cache.reset()

    def prepare(self) -> None:
        """Warm up (lazy cache allocation, kernel build and self-check, workspaces), then capture both steps."""
        if not self.use_graphs:
            self.reset()
            self._prefill()
            self._decode()
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.reset()
            self._prefill()
            self._decode()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        for name, step in (("prefill", self._prefill), ("decode", self._decode)):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            self.graphs[name] = graph
        self._captured_logits = self.logits  # the decode graph's output buffer
        torch.cuda.synchronize()

    def prefill(self) -> None:
        self.graphs["prefill"].replay() if self.use_graphs else self._prefill()

    def decode(self) -> None:
        self.graphs["decode"].replay() if self.use_graphs else self._decode()

    def decode_logits(self) -> torch.Tensor:
        return self._captured_logits if self.use_graphs else self.logits

    def time_once(self) -> tuple[float, float]:
        """(prefill seconds, decode seconds for gen_len steps)."""
        self.reset()
        if self.use_graphs:
            events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            events[0].record()
            self.prefill()
            events[1].record()
            for _ in range(self.s.gen_len):
                self.decode()
            events[2].record()
            torch.cuda.synchronize()
            return events[0].elapsed_time(events[1]) / 1e3, events[1].elapsed_time(events[2]) / 1e3
        t0 = time.perf_counter()
        self.prefill()
        t1 = time.perf_counter()
        for _ in range(self.s.gen_len):
            self.decode()
        return t1 - t0, time.perf_counter() - t1

    def check_decode(self, steps: int = 3) -> float:
        """Largest relative error of the decode step's logits (cache, graph) against a plain forward pass over
        the whole sequence so far, over the first ``steps`` steps of batch row 0."""
        self.reset()
        self.prefill()
        seq = torch.cat([self.prompt[:1], self.token[:1]], dim=1)
        worst = 0.0
        for step in range(min(steps, self.s.gen_len)):
            self.decode()
            if step == 0:  # every row of the first decode step, for the cross-model check in measure()
                self.first_step_logits = self.decode_logits()[:, -1].float().clone()
            got = self.decode_logits()[:1, -1].float()
            want = self.model(input_ids=seq).logits[:, -1].float()
            worst = max(worst, float((got - want).norm() / want.norm().clamp_min(1e-30)))
            seq = torch.cat([seq, self.token[:1]], dim=1)
        return worst

    def close(self) -> None:
        self.graphs.clear()
        self.logits = self._captured_logits = None
        self.cache = None


def _stats(seconds: list[float], tokens: int) -> dict:
    rates = [tokens / s for s in seconds]
    med = statistics.median(rates)
    return {
        "tok_s": round(med, 2),
        "min_tok_s": round(min(rates), 2),
        "max_tok_s": round(max(rates), 2),
        "spread_pct": round(100 * (max(rates) - min(rates)) / med, 2) if med else None,
        "median_ms": round(1e3 * statistics.median(seconds), 3),
        "samples": len(rates),
    }


def _measure_one(model, *, batch: int, settings: Settings, prompt: torch.Tensor, check: bool, decode_model=None) -> dict:
    runner = Runner(model, batch=batch, settings=settings, prompt=prompt, decode_model=decode_model)
    out: dict = {}
    try:
        try:
            runner.prepare()
        except RuntimeError as e:  # a step that cannot be captured: measure eagerly and say so
            if not runner.use_graphs:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.warning("batch %d: CUDA graph capture failed (%s); timing eagerly, launch overhead included", batch, first)
            out["cuda_graph_error"] = first
            runner.graphs.clear()
            runner.use_graphs = False
            torch.cuda.synchronize()
            runner.prepare()
        out["cuda_graphs"] = runner.use_graphs
        out["shared_cache_layers"] = runner.shared_cache_layers
        if check:
            out["decode_check_rel_error"] = round(runner.check_decode(), 6)
            out["first_step_logits"] = runner.first_step_logits
        times = [runner.time_once() for _ in range(settings.warmup + settings.repeats)][settings.warmup:]
        out["prefill"] = _stats([t[0] for t in times], batch * settings.prompt_len)
        out["decode"] = _stats([t[1] for t in times], batch * settings.gen_len)
        return out
    finally:
        runner.close()
        del runner
        if prompt.device.type == "cuda":
            torch.cuda.empty_cache()


def check_same_function(model, baseline, prompt: torch.Tensor) -> dict:
    """The quantized model against the baseline on one prompt row: KL, top-1 agreement and relative error of
    the next-token distributions at every position."""
    lp_base = ppl.window_logprobs(baseline, prompt[:1])
    lp = ppl.window_logprobs(model, prompt[:1])
    kl, same = ppl.compare_window(lp_base, lp)
    rel = float((lp.exp() - lp_base.exp()).norm() / lp_base.exp().norm().clamp_min(1e-30))
    return {"kl_divergence": round(float(kl.mean()), 6), "top1_agreement": round(float(same.double().mean()), 6),
            "prob_rel_error": round(rel, 6), "positions": int(kl.numel())}


def _decode_agreement(q_logits: torch.Tensor, b_logits: torch.Tensor, *, batch: int, same_weights: bool) -> dict:
    """The first decode step of both models (the prompt and the prefill's token are the same): the quantized
    model's decode-sized products (M = batch rows, the kernels' decode path) against the baseline's."""
    lp, lp_base = torch.log_softmax(q_logits, -1)[None], torch.log_softmax(b_logits, -1)[None]
    kl, same = ppl.compare_window(lp_base, lp)
    rel = float((lp.exp() - lp_base.exp()).norm() / lp_base.exp().norm().clamp_min(1e-30))
    check = {"name": "quantized vs baseline: the first decode step (cached, M = batch rows)", "batch": batch,
             "kl_divergence": round(float(kl.mean()), 6), "top1_agreement": round(float(same.double().mean()), 6),
             "prob_rel_error": round(rel, 6), "positions": int(kl.numel()), "same_weights": same_weights}
    if same_weights:
        check["passed"] = rel <= SAME_WEIGHTS_MAX_REL_ERROR
        if not check["passed"]:
            log.error("the quantized decode step disagrees with the bf16 model of the same weights (relative error %.3g)", rel)
    return check


@torch.inference_mode()
def measure(model, baseline, *, settings: Settings, same_weights: bool, progress: bool = True) -> dict:
    """The "throughput" section of the eval JSON for a quantized ``model`` and its bf16 ``baseline``.

    same_weights: the baseline holds the quantized model's dequantized weights, so both compute the same
    function up to rounding and the logits check is a pass/fail test of the kernels (else it is informative).
    """
    settings.validate()
    device = next(model.parameters()).device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    vocab = model.config.get_text_config().vocab_size
    gen = torch.Generator(device="cpu").manual_seed(settings.seed)
    prompt_all = torch.randint(0, vocab, (max(settings.batches), settings.prompt_len), generator=gen).to(device)
    env = environment(device, dtype)
    result = {"device": env["device"], "environment": env, "settings": asdict(settings),
              "meaningful": device.type == "cuda", "rows": [], "checks": []}
    if device.type != "cuda":
        result["note"] = CPU_NOTE
        log.warning(CPU_NOTE)
    agree = check_same_function(model, baseline, prompt_all)
    agree["name"] = "quantized vs baseline next-token distributions over the run's prompt (prefill-sized products)"
    agree["same_weights"] = same_weights
    if same_weights:
        agree["passed"] = agree["prob_rel_error"] <= SAME_WEIGHTS_MAX_REL_ERROR
        if not agree["passed"]:
            log.error("the quantized model disagrees with the bf16 model of the same weights (relative error %.3g)",
                      agree["prob_rel_error"])
    result["checks"].append(agree)
    if settings.fuse:
        result["fused_projections"] = {name: fuse_projections(m) for name, m in (("quantized", model), ("baseline", baseline))}
    steps = [(b, name) for b in settings.batches for name in ("baseline", "quantized")]
    measured: dict = {}
    with (grouped_decode_attention(model, baseline, decode_kernel=settings.decode_attention),
          prefetch.warmed(model) as warm_pairs,
          opaque_quantized_linears(model) if settings.compile else nullcontext()):
        result["l2_prefetch"] = {**prefetch.settings(), "pairs": len(warm_pairs)}
        result["attention"] = model.config._attn_implementation
        result["decode_attention"] = decode_kernel_of(model)  # what runs: SDPA where the kernel does not apply
        rope_qkv = [b for b in settings.batches if rope_in_qkv_of(model, b)]
        # (the 4-bit model's where its q/k/v kernel does not do it)
        rope = (rope_in_attention_of(model) or bool(rope_qkv)) and rope_in_attention_of(baseline)
        if result["decode_attention"] == "split":
            result["split_kv_settings"] = decode_attention.settings()
        decoders = ({name: _compiled(m, settings.compile_backend) for name, m in (("baseline", baseline), ("quantized", model))}
                    if settings.compile else {})
        for batch, name in tqdm(steps, desc="throughput", unit="run", disable=not progress):
            m = baseline if name == "baseline" else model
            measured[(batch, name)] = _measure_one(m, batch=batch, settings=settings, prompt=prompt_all[:batch].contiguous(),
                                                   check=batch == settings.batches[0], decode_model=decoders.get(name))
    for batch in settings.batches:
        q, b = measured[(batch, "quantized")], measured[(batch, "baseline")]
        result["rows"].append({
            "batch": batch,
            "prefill_tok_s": q["prefill"]["tok_s"],
            "decode_tok_s": q["decode"]["tok_s"],
            "baseline_prefill_tok_s": b["prefill"]["tok_s"],
            "baseline_decode_tok_s": b["decode"]["tok_s"],
            "prefill_speedup": round(q["prefill"]["tok_s"] / b["prefill"]["tok_s"], 3),
            "decode_speedup": round(q["decode"]["tok_s"] / b["decode"]["tok_s"], 3),
            "quantized": {"prefill": q["prefill"], "decode": q["decode"]},
            "baseline": {"prefill": b["prefill"], "decode": b["decode"]},
        })
        for name, part in (("quantized", q), ("baseline", b)):
            if "decode_check_rel_error" in part:
                err = part["decode_check_rel_error"]
                passed = err <= DECODE_MAX_REL_ERROR
                result["checks"].append({"name": f"{name}: cached decode step{' (compiled)' if settings.compile else ''}{' (CUDA graph)' if part['cuda_graphs'] else ''} vs a plain forward pass",
                                         "batch": batch, "logits_rel_error": err, "passed": passed})
                if not passed:
                    log.error("%s: the captured decode step disagrees with a plain forward pass (relative error %.3g)", name, err)
    first = settings.batches[0]
    q_logits = measured[(first, "quantized")].pop("first_step_logits")
    b_logits = measured[(first, "baseline")].pop("first_step_logits")
    result["checks"].append(_decode_agreement(q_logits, b_logits, batch=first, same_weights=same_weights))
    result["cuda_graphs"] = all(v["cuda_graphs"] for v in measured.values())
    # from session 54 on: whether both models' cache layers wrote at the runner's position (SHARED_CACHE_POSITION)
    result["shared_cache_position"] = all(v.pop("shared_cache_layers") > 0 for v in measured.values())
    # from session 55 on: both models' rotary embedding and cache write in the split kernel
    # (attention.ROPE_IN_ATTENTION)
    result["rope_in_attention"] = rope and result["shared_cache_position"]
    # from session 58 on: the batches whose decode steps ran the 4-bit model's rotary embedding and cache write in its
    # q/k/v kernel (fuse.ROPE_IN_QKV; steps of up to 8 sequences)
    result["rope_in_qkv"] = rope_qkv if result["shared_cache_position"] else []
    result["compiled_decode"] = settings.compile
    result["greedy_token"] = greedy.record(device)
    if settings.compile:
        result["compiled_x_image"] = COMPILED_X_IMAGE
        result["combo_kernels"] = COMBO_KERNELS  # recorded where on from session 38, either way from session 39
        result["inductor_pdl"] = inductor_pdl()  # from session 41 on
    if kernel_ops.WS_PIPELINED_32:  # an option measured slower (QUANTKIT_WS_PIPELINED_32), recorded where it was on
        result["ws_pipelined_32"] = True
    result["glu_epilogue"] = kernel_ops.GLU_EPILOGUE  # where the 4-bit model has gated pairs (fused_projections' glu)
    result["fused_mlp"] = kernel_ops.FUSED_MLP  # from session 45 on: the decode steps' MLP in one launch where it can
    result["glu_ws"] = kernel_ops.GLU_WS  # recorded where on in session 41's first runs, either way since
    result["stream_wk_warps_one_tile"] = kernel_ops.STREAM_WK_WARPS_ONE_TILE  # from session 48 on (4 before: the same)
    if defines := kernel_build.defines():  # csrc tuning macros of an experiment (QUANTKIT_KERNEL_DEFINES)
        result["kernel_defines"] = defines
    return result
