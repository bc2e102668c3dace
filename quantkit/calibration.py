"""Calibration data for GPTQ: where the text comes from and which token windows are used.

Sources (``--calib`` / recipe ``calibration.text``):
- nothing: the shipped offline text (quantkit.data.CALIB_TEXT, Pride and Prejudice);
- a file: plain UTF-8 text, or JSONL (``.jsonl``/``.json`` lines) whose records carry a ``text`` field
  (or ``content``, or chat ``messages`` whose contents are joined);
- the name of a shipped text;
- a Hub dataset ``owner/name[:config][@split]`` (needs the ``datasets`` package and a reachable Hub), its
  ``text`` column streamed, documents taken in order until enough tokens are there.

The evaluation text (persuasion) is refused under any of these names or contents.

Sampling is deterministic: documents are joined with the tokenizer's EOS (or a blank line), tokenized once, and
``samples`` windows of ``seq_len`` tokens are taken at evenly spaced starts across the whole text (disjoint when
the text is long enough; if it is too short they overlap, with a warning).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from quantkit import data
from quantkit.errors import InputError

log = logging.getLogger(__name__)

HUB_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<config>[\w.-]+))?(?:@(?P<split>[\w.\[\]:%-]+))?$")
HUB_MAX_DOCS = 100_000


@dataclass(frozen=True)
class CalibrationSet:
    label: str  # where the text came from, for the manifest
    tokens: torch.Tensor  # int64 [samples, seq_len]
    text_tokens: int  # tokens in the whole text
    overlapping: bool  # True when the text was too short for disjoint windows

    def digest(self) -> str:
        return hashlib.sha256(self.tokens.numpy().tobytes()).hexdigest()[:16]

    def to_dict(self) -> dict:
        s, length = self.tokens.shape
        return {"text": self.label, "samples": s, "seq_len": length, "text_tokens": self.text_tokens,
                "overlapping_windows": self.overlapping, "tokens_sha256": self.digest()}


def _eval_fingerprint() -> str:
    return data.shipped(data.EVAL_TEXT)[:2000]


def _refuse_eval(label: str, documents: list[str]) -> None:
    if Path(label.split(" ")[0]).stem.lower() == data.EVAL_TEXT:
        raise InputError(f"{label}: {data.EVAL_TEXT} is the evaluation text; never calibrate on it (choose another text)")
    head = _eval_fingerprint()[200:1200]
    if any(head in doc for doc in documents[:1000]):
        raise InputError(f"{label}: contains the evaluation text ({data.EVAL_TEXT}); never calibrate on it")


def _jsonl_documents(path: Path) -> list[str]:
    docs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{number}: not valid JSON ({e.msg}); JSONL needs one JSON object per line") from e
        docs.append(_record_text(record, f"{path}:{number}"))
    if not docs:
        raise InputError(f"{path}: no records")
    return docs


def _record_text(record, where: str) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        for key in ("text", "content"):
            if isinstance(record.get(key), str):
                return record[key]
        messages = record.get("messages")
        if isinstance(messages, list):
            return "\n".join(m["content"] for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str))
    raise InputError(f"{where}: record has no 'text', 'content' or 'messages' field")


def _hub_documents(spec: str, *, max_chars: int) -> list[str]:
    m = HUB_RE.match(spec)
    try:
        import datasets
    except ImportError as e:
        raise InputError(f"{spec}: reading a Hub dataset needs the 'datasets' package (pip install datasets), "
                         "or pass a local text/JSONL file") from e
    try:
        stream = datasets.load_dataset(m["repo"], m["config"], split=m["split"] or "train", streaming=True)
    except Exception as e:  # noqa: BLE001 - datasets raises many types (network, missing config); one clear line
        raise InputError(f"{spec}: cannot load this Hub dataset ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    docs, chars = [], 0
    for i, record in enumerate(stream):
        text = _record_text(record, f"{spec} row {i}")
        if text.strip():
            docs.append(text)
            chars += len(text)
        if chars >= max_chars or len(docs) >= HUB_MAX_DOCS:
            break
    if not docs:
        raise InputError(f"{spec}: no text rows")
    return docs


def load_documents(spec: str | None, *, max_chars: int = 50_000_000) -> tuple[str, list[str]]:
    """(label, documents) for a calibration source (see the module docstring)."""
    if spec is None:
        label, text = data.read_text(None, default=data.CALIB_TEXT)
        documents = [text]
    else:
        path = Path(spec)
        if path.is_file() and path.suffix.lower() in (".jsonl", ".json"):
            label, documents = path.name, _jsonl_documents(path)
        elif path.is_file() or (data.HERE / f"{spec}.txt.xz").is_file():
            if Path(spec).stem.lower() == data.EVAL_TEXT:
                _refuse_eval(spec, [])
            label, text = data.read_text(spec, default=data.CALIB_TEXT)
            documents = [text]
        elif HUB_RE.match(spec) and not spec.startswith((".", "/")):
            label, documents = f"{spec} (Hub dataset)", _hub_documents(spec, max_chars=max_chars)
        else:
            raise InputError(f"{spec}: no such calibration file, shipped text or Hub dataset id (owner/name[:config][@split])")
    _refuse_eval(label, documents)
    return label, documents


def sample(tokenizer, documents: list[str], *, samples: int, seq_len: int, label: str = "text") -> tuple[torch.Tensor, int, bool]:
    """[samples, seq_len] token windows at evenly spaced starts; (windows, total tokens, overlapping)."""
    sep = tokenizer.eos_token or "\n\n"
    ids = tokenizer(sep.join(documents), add_special_tokens=False)["input_ids"]
    total = len(ids)
    if total < seq_len:
        raise InputError(f"{label}: {total} tokens, fewer than one calibration window of {seq_len}; "
                         "use a longer text or a smaller --calib-seq-len")
    tokens = torch.tensor(ids, dtype=torch.long)
    span = total - seq_len
    starts = [0] if samples == 1 else [(i * span) // (samples - 1) for i in range(samples)]
    overlapping = samples * seq_len > total
    if overlapping:
        log.warning("%s: %d tokens are fewer than %d samples x %d; calibration windows overlap",
                    label, total, samples, seq_len)
    return torch.stack([tokens[s : s + seq_len] for s in starts]), total, overlapping


def build(tokenizer, spec: str | None, *, samples: int, seq_len: int) -> CalibrationSet:
    """The calibration token windows for a recipe's calibration settings."""
    label, documents = load_documents(spec, max_chars=max(samples * seq_len * 16, 1_000_000))
    tokens, total, overlapping = sample(tokenizer, documents, samples=samples, seq_len=seq_len, label=label)
    return CalibrationSet(label, tokens, total, overlapping)
