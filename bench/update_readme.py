"""Splice the committed result tables (bench/results/NAME.md) into README.md between their markers:

    <!-- results:NAME -->
    ...replaced...
    <!-- /results:NAME -->

    python bench/update_readme.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    missing = []

    def splice(m: re.Match) -> str:
        name = m.group(1)
        table = ROOT / "bench" / "results" / f"{name}.md"
        if not table.is_file():
            missing.append(name)
            return m.group(0)
        body = re.sub(r"^#+ (.*)$", r"**\1**", table.read_text().strip(), flags=re.M)  # no headings inside README
        return f"<!-- results:{name} -->\n{body}\n<!-- /results:{name} -->"

    text = re.sub(r"<!-- results:([\w.-]+) -->.*?<!-- /results:\1 -->", splice, text, flags=re.S)
    readme.write_text(text)
    for name in missing:
        sys.stderr.write(f"bench/results/{name}.md is missing; that table was left as it was\n")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
