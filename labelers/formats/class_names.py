"""Class names as written in label files and shown to a VLM: full names or last-word short names.

The seed protocol cut every class name to its last word unless ``--long-label`` was given, which
silently merged classes such as "aquatic mammals" and "small mammals". Here the short form is only
used after checking that it keeps every class distinct.
"""
from __future__ import annotations


class ShortNameCollision(ValueError):
    """Two or more classes would share the same short (last-word) name."""


def short_name(name: str) -> str:
    """Return the last whitespace-separated word of ``name`` (the whole name if it has one word)."""
    words = name.split()
    return words[-1] if words else name


def display_names(class_names: list[str], long_label: bool = True) -> list[str]:
    """Return the names used in prompts and label files, one per class, in class order.

    With ``long_label`` the names are returned unchanged. Otherwise each becomes its last word;
    raises ShortNameCollision naming the merged classes when two classes would end up the same
    (case-insensitively), and ValueError when ``class_names`` itself has duplicates or blanks.
    """
    _check_distinct(class_names, "class names")
    if long_label:
        return list(class_names)
    shorts = [short_name(name) for name in class_names]
    groups: dict[str, list[str]] = {}
    for full, short in zip(class_names, shorts):
        groups.setdefault(short.lower(), []).append(full)
    merged = {key: fulls for key, fulls in groups.items() if len(fulls) > 1}
    if merged:
        detail = "; ".join(f"{key!r} <- {', '.join(map(repr, fulls))}" for key, fulls in merged.items())
        raise ShortNameCollision(
            f"short (last-word) class names would merge classes: {detail}. Use --long-label.")
    return shorts


def _check_distinct(names: list[str], what: str) -> None:
    seen: dict[str, str] = {}
    for name in names:
        if not str(name).strip():
            raise ValueError(f"{what} contain a blank name")
        key = str(name).strip().lower()
        if key in seen:
            raise ValueError(f"{what} contain a duplicate: {seen[key]!r} and {name!r}")
        seen[key] = name
