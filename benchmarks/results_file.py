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


def remove_section(name: str) -> bool:
    """Delete benchmark `name`'s section (markers included) from RESULTS.md, for a section another one
    supersedes. Returns False when the section is not there (nothing is changed)."""
    begin, end = markers(name)
    old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
    if begin not in old or end not in old:
        return False
    head, rest = old.split(begin, 1)
    tail = rest.split(end, 1)[1].lstrip("\n")
    RESULTS.write_text(head.rstrip("\n") + ("\n\n" + tail if tail else "\n"), encoding="utf-8")
    return True
