"""Public-domain texts shipped with quantkit so that calibration and evaluation work offline.

Jane Austen, from Project Gutenberg (public domain): ``persuasion`` is the evaluation text (never calibrate
on it), ``prideprejudice`` the default calibration text.
"""

from __future__ import annotations

import lzma
from pathlib import Path

from quantkit.errors import InputError

HERE = Path(__file__).resolve().parent
EVAL_TEXT = "persuasion"
CALIB_TEXT = "prideprejudice"


def shipped(name: str) -> str:
    path = HERE / f"{name}.txt.xz"
    if not path.is_file():
        raise InputError(f"shipped text {name!r} is missing from {HERE}; reinstall quantkit")
    return lzma.decompress(path.read_bytes()).decode("utf-8")


def read_text(path_or_name: str | Path | None, *, default: str) -> tuple[str, str]:
    """(label, text): a file path, the name of a shipped text, or None for ``default``."""
    if path_or_name is None:
        return f"{default}.txt (shipped)", shipped(default)
    path = Path(path_or_name)
    if path.is_file():
        try:
            return path.name, path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: not UTF-8 text ({e}); convert it to UTF-8") from e
    if (HERE / f"{path_or_name}.txt.xz").is_file():
        return f"{path_or_name}.txt (shipped)", shipped(str(path_or_name))
    raise InputError(f"{path}: text file not found")
