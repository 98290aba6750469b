"""benchmarks/RESULTS.md is shared: each benchmark owns the text between its own markers."""
from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def markers(name: str) -> tuple[str, str]:
    """Return the begin/end HTML comments that delimit benchmark `name`'s section."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(name: str, text: str) -> None:
    """Replace benchmark `name`'s section of RESULTS.md with `text` (append it if missing); others stay."""
    begin, end = markers(name)
    body = f"{begin}\n{text.strip()}\n{end}"
    old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + body + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + body + "\n"
    RESULTS.write_text(new, encoding="utf-8")
