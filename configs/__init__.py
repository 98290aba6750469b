"""YAML defaults of labelloop (package data), and the one reader every room uses for them."""
from __future__ import annotations

from typing import Any


def read_mapping(text: str, source: str, error: type[Exception] = ValueError) -> dict[str, Any]:
    """Parse YAML `text` that must hold a mapping; raise `error` naming `source` when it does not."""
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{source}: expected a mapping of settings at the top level")
    return data
