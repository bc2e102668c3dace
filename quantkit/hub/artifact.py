"""Reload a converted artifact directory and check it is whole before it is published.

Checked: config.json with a GPTQ quantization_config (and quantize_config.json agreeing with it), a tokenizer
that transformers loads, every tensor of every safetensors shard readable (and the GPTQ tensors' shapes
consistent with bits / group size), every GGUF readable, the manifest, and quantkit_eval.json measured on
exactly these weights (its weights_digest). Nothing here touches the network.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from quantkit.errors import InputError
from quantkit.manifest import EVAL_JSON, MANIFEST, weights_digest

log = logging.getLogger(__name__)

CHECKPOINT_FORMATS = ("gptq", "gptq_v2")
README = "README.md"


@dataclass(frozen=True)
class Artifact:
    """What a checked artifact directory holds; the card is rendered from these dicts."""

    directory: Path
    config: dict
    quantization: dict
    manifest: dict
    eval: dict
    files: list[str]  # paths relative to directory, POSIX, sorted; what push uploads (README.md excluded)
    gguf_files: list[str] = field(default_factory=list)
    quantized_layers: int = 0


def _oneline(error: BaseException, limit: int = 240) -> str:
    """An exception's text on one line, cut short: messages stay one line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_json(path: Path, what_to_do: str) -> dict:
    if not path.is_file():
        raise InputError(f"{path}: missing; {what_to_do}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({_oneline(e)}); {what_to_do}") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object; {what_to_do}")
    return data


def _check_quantization(directory: Path, config: dict) -> dict:
    redo = "re-run `quantkit convert`"
    q = config.get("quantization_config")
    where = directory / "config.json"
    if not isinstance(q, dict):
        raise InputError(f"{where}: no quantization_config; this is not a quantized checkpoint ({redo})")
    if q.get("quant_method") != "gptq":
        raise InputError(f"{where}: quant_method is {q.get('quant_method')!r}, expected 'gptq' ({redo})")
    bits, group = q.get("bits"), q.get("group_size")
    if bits not in (2, 3, 4, 8):
        raise InputError(f"{where}: quantization_config.bits is {bits!r}, expected 2, 3, 4 or 8 ({redo})")
    if not isinstance(group, int) or isinstance(group, bool) or (group != -1 and group <= 0):
        raise InputError(f"{where}: quantization_config.group_size is {group!r}, expected -1 or a positive int ({redo})")
    for key in ("sym", "desc_act"):
        if not isinstance(q.get(key), bool):
            raise InputError(f"{where}: quantization_config.{key} is {q.get(key)!r}, expected true/false ({redo})")
    fmt = q.get("checkpoint_format", "gptq")
    if fmt not in CHECKPOINT_FORMATS:
        raise InputError(f"{where}: checkpoint_format {fmt!r} is not one of {CHECKPOINT_FORMATS} ({redo})")
    side = directory / "quantize_config.json"
    if side.is_file():
        other = _read_json(side, redo)
        for key in ("bits", "group_size", "sym", "desc_act", "checkpoint_format"):
            if key in other and other[key] != q.get(key):
                raise InputError(f"{side}: {key}={other[key]!r} disagrees with config.json ({q.get(key)!r}); {redo}")
    return q


def _check_config_and_tokenizer(directory: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    try:
        AutoConfig.from_pretrained(directory)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{directory / 'config.json'}: transformers cannot load it ({_oneline(e)}); re-run `quantkit convert`") from e
    try:
        AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(
            f"{directory}: transformers cannot load the tokenizer ({_oneline(e)}); copy the base model's tokenizer files here"
        ) from e


def _shards(directory: Path) -> dict[str, set[str] | None]:
    """Shard name -> tensor names the index promises in it (None when there is no index)."""
    index = directory / "model.safetensors.index.json"
    present = sorted(p.name for p in directory.glob("*.safetensors"))
    if not index.is_file():
        if not present:
            raise InputError(f"{directory}: no *.safetensors weights; re-run `quantkit convert`")
        return {name: None for name in present}
    weight_map = _read_json(index, "re-run `quantkit convert`").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{index}: no weight_map; re-run `quantkit convert`")
    shards: dict[str, set[str] | None] = {}
    for tensor, shard in weight_map.items():
        shards.setdefault(shard, set()).add(tensor)
    for shard in shards:
        if not (directory / shard).is_file():
            raise InputError(f"{directory / shard}: shard named in {index.name} is missing; re-run `quantkit convert`")
    stray = sorted(set(present) - set(shards))
    if stray:
        raise InputError(f"{directory / stray[0]}: not named in {index.name}; remove it or re-run `quantkit convert`")
    return shards


def _check_tensors(directory: Path, q: dict) -> int:
    """Read every tensor; check GPTQ shapes against bits / group size. Returns the number of quantized linears."""
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for shard, promised in _shards(directory).items():
        path = directory / shard
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                names = set(f.keys())
                if promised is not None and promised - names:
                    missing = sorted(promised - names)[0]
                    raise InputError(f"{path}: tensor {missing} named in the index is absent; re-run `quantkit convert`")
                for name in sorted(names):
                    t = f.get_tensor(name)
                    shapes[name] = (tuple(t.shape), str(t.dtype).removeprefix("torch."))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise InputError(f"{path}: unreadable safetensors ({_oneline(e)}); re-run `quantkit convert`") from e
    bits, group = q["bits"], q["group_size"]
    prefixes = [n[: -len(".qweight")] for n in shapes if n.endswith(".qweight")]
    if not prefixes:
        raise InputError(f"{directory}: no *.qweight tensors; the weights are not GPTQ-packed (re-run `quantkit convert`)")
    for prefix in prefixes:
        _check_layer(directory, prefix, shapes, bits, group)
    return len(prefixes)


def _check_layer(directory: Path, prefix: str, shapes: dict, bits: int, group: int) -> None:
    def bad(why: str) -> InputError:
        return InputError(f"{directory}: {prefix}: {why}; re-run `quantkit convert`")

    for suffix in ("qweight", "qzeros", "scales"):
        if f"{prefix}.{suffix}" not in shapes:
            raise bad(f"{suffix} is missing")
    (qw, qw_dtype), (qz, qz_dtype), (sc, _) = (shapes[f"{prefix}.{s}"] for s in ("qweight", "qzeros", "scales"))
    if qw_dtype != "int32" or qz_dtype != "int32" or len(qw) != 2 or len(qz) != 2 or len(sc) != 2:
        raise bad(f"qweight/qzeros must be 2-D int32 (got {qw_dtype} {qw}, {qz_dtype} {qz})")
    n = qw[1]
    k = qw[0] * 32 // bits
    groups = 1 if group == -1 else -(-k // group)
    if sc != (groups, n):
        raise bad(f"scales {sc} do not match [{groups}, {n}] for K={k}, group size {group}")
    if qz != (groups, -(-n * bits // 32)):
        raise bad(f"qzeros {qz} do not match [{groups}, {-(-n * bits // 32)}]")
    g_idx = shapes.get(f"{prefix}.g_idx")
    if g_idx is not None and g_idx[0] != (k,):
        raise bad(f"g_idx {g_idx[0]} does not match [{k}]")


def _check_gguf(path: Path) -> None:
    import gguf

    try:
        reader = gguf.GGUFReader(path)
        for tensor in reader.tensors:
            tensor.data.tobytes()
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise InputError(f"{path}: unreadable GGUF ({_oneline(e)}); re-run `quantkit convert` with gguf in the recipe") from e


def _check_eval(directory: Path) -> dict:
    path = directory / EVAL_JSON
    data = _read_json(path, f"run `quantkit eval {directory}` before publishing")
    recorded = data.get("weights_digest")
    actual = weights_digest(directory)
    if recorded != actual:
        raise InputError(
            f"{path}: measured other weights (weights_digest {str(recorded)[:12]}... != {actual[:12]}...); "
            f"re-run `quantkit eval {directory}`"
        )
    return data


def _upload_list(directory: Path) -> list[str]:
    files = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts):
            continue  # hidden files, .cache/, atomic-write leftovers (.name.partial-*)
        if not path.is_file():
            if path.is_symlink():
                raise InputError(f"{path}: a broken symbolic link; remove it or replace it with the file")
            continue  # directories (their files are listed on their own)
        if rel.as_posix() == README:
            continue  # the card is rendered fresh from the JSON
        files.append(rel.as_posix())
    return files


def check_artifact(directory: str | Path) -> Artifact:
    """Reload ``directory`` and check everything push will upload; raises InputError naming the first problem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory; pass the output directory of `quantkit convert`")
    config = _read_json(directory / "config.json", "re-run `quantkit convert`")
    q = _check_quantization(directory, config)
    manifest = _read_json(directory / MANIFEST, "re-run `quantkit convert` (it writes the manifest)")
    _check_config_and_tokenizer(directory)
    quantized = _check_tensors(directory, q)
    gguf_files = sorted(p.name for p in directory.glob("*.gguf"))
    for name in gguf_files:
        _check_gguf(directory / name)
    evaluation = _check_eval(directory)
    files = _upload_list(directory)
    log.info("%s: checked %d files, %d quantized linears", directory, len(files), quantized)
    return Artifact(
        directory=directory, config=config, quantization=q, manifest=manifest, eval=evaluation,
        files=files, gguf_files=gguf_files, quantized_layers=quantized,
    )
