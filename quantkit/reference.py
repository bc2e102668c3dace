"""The pure-torch reference: a QuantLinear module (unpack, dequantize, matmul) and a loader that builds the
transformers model from a quantized directory with those modules. Every kernel and every other format is
checked against this.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from quantkit import qlinear
from quantkit.errors import InputError, UnsupportedError
from quantkit.formats import gptq
from quantkit.qlinear import QuantizedLinear
from quantkit.source import TensorSource

log = logging.getLogger(__name__)


class QuantLinear(nn.Module):
    """y = x W^T (+ b) with W dequantized from GPTQ tensors. The dequantized weight is cached per dtype/device."""

    def __init__(self, ql: QuantizedLinear):
        super().__init__()
        self.ql = ql
        self.in_features, self.out_features = ql.in_features, ql.out_features
        self.bias = nn.Parameter(ql.bias, requires_grad=False) if ql.bias is not None else None
        self._weight: torch.Tensor | None = None

    def weight_as(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        w = self._weight
        if w is None or w.dtype != dtype or w.device != device:
            w = self.ql.dequantize(torch.float32).to(device=device, dtype=dtype)
            self._weight = w
        return w

    @classmethod
    def concat(cls, layers: list["QuantLinear"]) -> "QuantLinear":
        """One module computing several of the same input, outputs one after the other (qlinear.concat)."""
        try:
            return cls(qlinear.concat([m.ql for m in layers]))
        except ValueError as e:
            raise InputError(str(e)) from e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_as(x.dtype, x.device)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return nn.functional.linear(x, w, bias)

    def extra_repr(self) -> str:
        q = self.ql
        return f"in={self.in_features}, out={self.out_features}, bits={q.bits}, group={q.group_size}, sym={q.sym}"


def read_quant_config(directory: Path) -> dict:
    config = json.loads((Path(directory) / "config.json").read_text())
    qcfg = config.get("quantization_config")
    if not qcfg or qcfg.get("quant_method") != "gptq":
        raise InputError(f"{directory}/config.json: no GPTQ quantization_config; is this a quantized checkpoint?")
    return qcfg


def read_linears(src: TensorSource, qcfg: dict) -> dict[str, QuantizedLinear]:
    """Every quantized linear of a GPTQ checkpoint, by module name."""
    out = {}
    for name in src.names():
        if not name.endswith(".qweight"):
            continue
        prefix = name[: -len(".qweight")]
        out[prefix] = gptq.unpack(
            lambda suffix, p=prefix: src.get(f"{p}.{suffix}"),
            bits=qcfg["bits"],
            group_size=qcfg["group_size"],
            sym=qcfg.get("sym", True),
            checkpoint_format=qcfg.get("checkpoint_format", "gptq"),
            has_bias=f"{prefix}.bias" in src,
        )
    return out


def _plain_config(directory: Path, dtype: torch.dtype):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    return config


def load_model(directory: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu", module_factory=None):
    """The transformers model of a quantized directory with every quantized linear replaced by a QuantLinear
    (or by ``module_factory(QuantizedLinear)``, e.g. the kernel module). Plain tensors load as stored."""
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    qcfg = read_quant_config(directory)
    factory = module_factory or QuantLinear
    with TensorSource(directory) as src:
        linears = read_linears(src, qcfg)
        config = _plain_config(directory, dtype)
        if "lm_head" in linears and getattr(config, "tie_word_embeddings", False):
            log.info("%s: lm_head is quantized, so it is not tied to the embeddings", directory)
            config.tie_word_embeddings = False
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        fused = [name for name in linears if not isinstance(_module_or_none(model, name), nn.Linear)]
        if not fused:
            for name, ql in linears.items():
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, factory(ql))
            state = {n: _as(src.get(n), dtype) for n in src.names() if n.rpartition(".")[0] not in linears}
    if fused:
        # transformers fuses some modules (MoE experts into 3-D parameters): there is no nn.Linear to swap, so
        # those models are built from the dequantized weights through transformers' own loading.
        if module_factory is not None:
            raise UnsupportedError(f"{directory}: {fused[0]} is not an nn.Linear in transformers (fused MoE experts?); "
                                   "only the reference (dequantized) backend can run this model")
        log.info("%s: %s is fused in transformers; building the model from dequantized weights", directory, fused[0])
        return load_dequantized_model(directory, dtype=dtype, device=device)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not m.rpartition(".")[0] in linears]
    if config.tie_word_embeddings:
        model.tie_weights()
        missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise InputError(f"{directory}: tensors do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    _materialize_buffers(model, config)
    return model.to(device).eval()


def _module_or_none(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() else t


def load_dequantized_model(directory: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """A plain transformers model of a quantized directory: no quantized modules, every quantized linear's weight
    is its dequantized weight (computed in fp32, then cast to ``dtype``), loaded through transformers' own loading
    (which also fuses MoE experts where transformers does). The independent decoder other loaders are checked
    against; every tensor must be used and every parameter covered."""
    import tempfile

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    state = dequantized_state_dict(directory, dtype=dtype)
    with tempfile.TemporaryDirectory(prefix="quantkit-dequant-") as tmp:
        config = json.loads((directory / "config.json").read_text())
        config.pop("quantization_config", None)
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        save_file({n: _as(t, dtype).contiguous() for n, t in state.items()}, str(Path(tmp) / "model.safetensors"),
                  metadata={"format": "pt"})
        model, info = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, output_loading_info=True)
    bad = {k: list(v)[:3] for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise InputError(f"{directory}: the dequantized tensors do not match the model ({bad})")
    return model.to(device).eval()


def _materialize_buffers(model, config) -> None:
    """Rebuild the non-persistent buffers (rotary inv_freq) that a meta-device build leaves empty, by building
    that small module again on the CPU from its config."""
    for name, module in model.named_modules():
        if not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        module_config = getattr(module, "config", None)
        if module_config is None:
            raise UnsupportedError(f"{name}: buffers of {type(module).__name__} cannot be rebuilt off the meta device")
        fresh = type(module)(module_config)
        for buf_name, buf in fresh.named_buffers(recurse=False):
            setattr(module, buf_name, buf)


def dequantized_state_dict(directory: str | Path, *, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The checkpoint with every quantized linear replaced by its dequantized ``.weight`` (fake-quant)."""
    directory = Path(directory)
    qcfg = read_quant_config(directory)
    with TensorSource(directory) as src:
        linears = read_linears(src, qcfg)
        quant_tensors = {f"{p}.{s}" for p in linears for s in ("qweight", "qzeros", "scales", "g_idx")}
        state = {n: src.get(n) for n in src.names() if n not in quant_tensors}
    for prefix, ql in linears.items():
        state[f"{prefix}.weight"] = ql.dequantize(dtype)
    return state
