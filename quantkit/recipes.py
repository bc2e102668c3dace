"""Recipes: YAML presets of quantization options, validated on load. Command-line options override them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from quantkit.errors import InputError

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = "rdna3-w4a16-g32"

METHODS = ("rtn", "gptq")
DTYPES = ("bf16", "fp16")
FORMATS = ("gptq", "gguf")
CHECKPOINT_FORMATS = ("gptq", "gptq_v2")


@dataclass(frozen=True)
class Calibration:
    text: str | None = None  # file (text or JSONL), Hub dataset id, or None for the shipped default
    samples: int = 128
    seq_len: int = 512


@dataclass(frozen=True)
class GPTQOptions:
    damp_percent: float = 0.01
    block_size: int = 128
    act_order: bool = True
    static_groups: bool = True
    true_sequential: bool = True


@dataclass(frozen=True)
class Recipe:
    name: str = "custom"
    description: str = ""
    method: str = "rtn"
    bits: int = 4
    group_size: int = 32
    sym: bool = True
    dtype: str = "bf16"
    checkpoint_format: str = "gptq"
    formats: tuple[str, ...] = ("gptq",)
    skip: tuple[str, ...] = ()
    quantize_lm_head: bool = False  # quantize lm_head too (tied embeddings: the embedding stays, lm_head is untied)
    calibration: Calibration = field(default_factory=Calibration)
    gptq: GPTQOptions = field(default_factory=GPTQOptions)

    def validate(self, origin: str) -> "Recipe":
        def bad(key: str, why: str) -> InputError:
            return InputError(f"{origin}: {key}: {why}")

        if self.method not in METHODS:
            raise bad("method", f"{self.method!r} is not one of {', '.join(METHODS)}")
        if self.bits != 4:
            raise bad("bits", f"{self.bits} is not supported; quantkit writes 4-bit weights")
        if self.group_size not in (32, 64, 128):
            raise bad("group_size", f"{self.group_size} is not one of 32, 64, 128")
        if self.dtype not in DTYPES:
            raise bad("dtype", f"{self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise bad("checkpoint_format", f"{self.checkpoint_format!r} is not one of {', '.join(CHECKPOINT_FORMATS)}")
        if not self.formats or any(f not in FORMATS for f in self.formats) or "gptq" not in self.formats:
            raise bad("formats", f"{list(self.formats)} must list 'gptq' and optionally 'gguf'")
        if self.calibration.samples < 1 or self.calibration.seq_len < 16:
            raise bad("calibration", "samples must be >= 1 and seq_len >= 16")
        if not 0 <= self.gptq.damp_percent < 1:
            raise bad("gptq.damp_percent", f"{self.gptq.damp_percent} must be in [0, 1)")
        if self.gptq.block_size < 1:
            raise bad("gptq.block_size", "must be positive")
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["formats"] = list(self.formats)
        d["skip"] = list(self.skip)
        return d


def _build(cls, data: dict, origin: str, prefix: str = ""):
    if not isinstance(data, dict):
        raise InputError(f"{origin}: {prefix or 'recipe'} must be a mapping")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise InputError(f"{origin}: unknown key {prefix}{key!r}; known keys: {', '.join(known)}")
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, origin, f"{prefix}{key}.")
        elif isinstance(default, tuple):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                raise InputError(f"{origin}: {prefix}{key} must be a list")
            value = tuple(str(v) for v in value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise InputError(f"{origin}: {prefix}{key} must be true or false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{origin}: {prefix}{key} must be a number, got {value!r}")
            value = type(default)(value)
        elif default is None or isinstance(default, str):
            if value is not None and not isinstance(value, str):
                raise InputError(f"{origin}: {prefix}{key} must be a string, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def available() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load(name_or_path: str | None) -> Recipe:
    """A recipe by name (from recipes/) or by path; None gives the default recipe."""
    name_or_path = name_or_path or DEFAULT_RECIPE
    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise InputError(f"recipe {name_or_path!r}: no such file or shipped recipe; shipped: {', '.join(available())}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    data.setdefault("name", path.stem)
    return _build(Recipe, data, str(path)).validate(str(path))


def override(recipe: Recipe, **options) -> Recipe:
    """The recipe with every option that is not None replaced (command-line values win)."""
    changes = {k: v for k, v in options.items() if v is not None}
    calib = {k.removeprefix("calib_"): changes.pop(k) for k in list(changes) if k.startswith("calib_")}
    if calib:
        changes["calibration"] = dataclasses.replace(recipe.calibration, **calib)
    gptq = {k.removeprefix("gptq_"): changes.pop(k) for k in list(changes) if k.startswith("gptq_")}
    if gptq:
        changes["gptq"] = dataclasses.replace(recipe.gptq, **gptq)
    if "formats" in changes and isinstance(changes["formats"], str):
        changes["formats"] = tuple(f.strip() for f in changes["formats"].split(",") if f.strip())
    if "skip" in changes:
        changes["skip"] = tuple(recipe.skip) + tuple(changes["skip"])
    changed = sorted(k for k, v in changes.items() if k != "name" and getattr(recipe, k) != v)
    if changed and "name" not in changes:  # the output names what made it: "rdna3-w4a16-g32+group_size,sym"
        changes["name"] = f"{recipe.name}+{','.join(changed)}"
    return dataclasses.replace(recipe, **changes).validate("command line")
