"""Which tensors of a checkpoint get quantized, layer by layer, and in which order.

The plan is computed from tensor names and shapes alone (nothing is loaded): the linears of each decoder
block, in true-sequential order (attention inputs, attention output, MLP inputs, MLP output), MoE experts
included as plain linears; routers, norms and embeddings stay as they are, and so does lm_head unless the
recipe asks for it (``quantize_lm_head``): then it is one more linear, quantized after the decoder blocks. With
tied embeddings its weight is read from ``model.embed_tokens.weight``; the embedding itself stays unquantized.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from quantkit.errors import InputError, UnsupportedError

# model_type -> transformers architecture family we know the tensor names of.
SUPPORTED = {
    "llama": "dense",
    "mistral": "dense",
    "qwen2": "dense",
    "qwen3": "dense",
    "qwen2_moe": "moe",
    "qwen3_moe": "moe",
    "mixtral": "moe",
}

LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

# (regex on the name inside a block, true-sequential stage). Anything 2-D not listed here stays unquantized.
LINEAR_RULES = [
    (re.compile(r"self_attn\.(q|k|v)_proj$"), 0),
    (re.compile(r"self_attn\.o_proj$"), 1),
    (re.compile(r"mlp\.(gate|up)_proj$"), 2),
    (re.compile(r"mlp\.down_proj$"), 3),
    (re.compile(r"mlp\.experts\.\d+\.(gate|up)_proj$"), 2),
    (re.compile(r"mlp\.experts\.\d+\.down_proj$"), 3),
    (re.compile(r"mlp\.shared_expert\.(gate|up)_proj$"), 2),
    (re.compile(r"mlp\.shared_expert\.down_proj$"), 3),
    (re.compile(r"block_sparse_moe\.experts\.\d+\.w(1|3)$"), 2),
    (re.compile(r"block_sparse_moe\.experts\.\d+\.w2$"), 3),
]


@dataclass(frozen=True)
class LinearPlan:
    name: str  # module name, e.g. model.layers.0.self_attn.q_proj
    out_features: int
    in_features: int
    stage: int  # true-sequential stage inside the block
    has_bias: bool


@dataclass
class LayerPlan:
    index: int
    linears: list[LinearPlan] = field(default_factory=list)  # quantized, in stage order
    kept: list[str] = field(default_factory=list)  # every other tensor name of the block

    def stages(self) -> list[list[LinearPlan]]:
        out: dict[int, list[LinearPlan]] = {}
        for lin in self.linears:
            out.setdefault(lin.stage, []).append(lin)
        return [out[s] for s in sorted(out)]


HEAD = "lm_head"


@dataclass(frozen=True)
class HeadPlan:
    """lm_head as a quantized linear: ``source`` is the tensor its weight is read from (``lm_head.weight``, or
    ``model.embed_tokens.weight`` when the embeddings are tied)."""

    linear: LinearPlan
    source: str
    tied: bool


@dataclass
class Plan:
    model_type: str
    layers: list[LayerPlan]
    outside: list[str]  # tensors outside the decoder blocks written as they are (embeddings, final norm, lm_head)
    skipped: list[str]  # linears kept unquantized by a skip rule
    head: HeadPlan | None = None  # lm_head, when it is quantized (then not in ``outside``)

    @property
    def quantized(self) -> list[LinearPlan]:
        """Every quantized linear: the decoder blocks' in order, then lm_head if it is quantized."""
        return [lin for layer in self.layers for lin in layer.linears] + ([self.head.linear] if self.head else [])


def _stage(inner: str) -> int | None:
    for pattern, stage in LINEAR_RULES:
        if pattern.search(inner):
            return stage
    return None


def _skipped(module: str, patterns: list[str]) -> bool:
    """A skip pattern is a glob on the module name (``*.down_proj``), or a regex after ``re:``."""
    for p in patterns:
        if p.startswith("re:"):
            if re.search(p[3:], module):
                return True
        elif fnmatch.fnmatchcase(module, p):
            return True
    return False


def make_plan(config: dict, shapes: dict[str, tuple[int, ...]], *, group_size: int, skip: list[str] = (),
              quantize_lm_head: bool = False) -> Plan:
    """Build the plan; raise a clear error for unsupported architectures and groups that do not divide K."""
    model_type = config.get("model_type", "")
    if model_type not in SUPPORTED:
        raise UnsupportedError(
            f"config.json: model_type {model_type!r} is not supported; supported: {', '.join(sorted(SUPPORTED))}"
        )
    skip = list(skip)
    for p in skip:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as e:
                raise InputError(f"skip pattern {p!r}: invalid regular expression ({e})") from e
    layers: dict[int, LayerPlan] = {}
    outside, skipped = [], []
    for name in sorted(shapes):
        m = LAYER_RE.match(name)
        if not m:
            outside.append(name)
            continue
        index, inner = int(m.group(1)), m.group(2)
        layer = layers.setdefault(index, LayerPlan(index))
        module, _, leaf = inner.rpartition(".")
        stage = _stage(module) if leaf == "weight" and len(shapes[name]) == 2 else None
        full = f"model.layers.{index}.{module}"
        if stage is None:
            layer.kept.append(name)
            continue
        if _skipped(full, skip):
            skipped.append(full)
            layer.kept.append(name)
            continue
        out_features, in_features = shapes[name]
        if in_features % group_size:
            raise InputError(
                f"{name}: group size {group_size} does not divide K={in_features}; "
                f"choose a group size that divides it or keep the layer with --skip '{full}'"
            )
        layer.linears.append(LinearPlan(full, out_features, in_features, stage, f"{full}.bias" in shapes))
    for layer in layers.values():
        bias_names = {f"{lin.name}.bias" for lin in layer.linears}
        layer.kept = [n for n in layer.kept if n not in bias_names]
        layer.linears.sort(key=lambda lin: (lin.stage, _natural(lin.name)))
    if not layers:
        raise InputError("checkpoint has no model.layers.N.* tensors; is this a decoder-only LM checkpoint?")
    head = None
    if quantize_lm_head:
        if _skipped(HEAD, skip):
            skipped.append(HEAD)
        else:
            head = _head_plan(config, shapes, group_size)
            outside = [n for n in outside if n != f"{HEAD}.weight"]
    return Plan(model_type, [layers[i] for i in sorted(layers)], outside, skipped, head)


def _head_plan(config: dict, shapes: dict[str, tuple[int, ...]], group_size: int) -> HeadPlan:
    tied = bool(config.get("tie_word_embeddings", False))
    source = "model.embed_tokens.weight" if tied else f"{HEAD}.weight"
    if source not in shapes:
        raise InputError(f"{source}: not in the checkpoint, so lm_head cannot be quantized; "
                         "check the checkpoint or drop --quantize-lm-head")
    if f"{HEAD}.bias" in shapes:
        raise UnsupportedError(f"{HEAD}.bias: an lm_head with a bias is not supported; drop --quantize-lm-head")
    out_features, in_features = shapes[source]
    if in_features % group_size:
        raise InputError(
            f"{HEAD}.weight: group size {group_size} does not divide K={in_features}; "
            f"choose a group size that divides it or keep lm_head unquantized (--keep-lm-head)"
        )
    return HeadPlan(LinearPlan(HEAD, out_features, in_features, 0, False), source, tied)


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
