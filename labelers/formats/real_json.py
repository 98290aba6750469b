"""ImageNet-ReaL's `real.json`: a list of label lists, one per image in sorted-filename order.

An empty list marks an image the raters could not label; it is unscored, not "no object".
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .relabel_json import RelabelFormatError, _load_json, atomic_write_json


def read_real_json(path: str | Path, filenames: Sequence[str], n_classes: int | None = None
                   ) -> dict[str, list[int]]:
    """Return {filename: labels} pairing the lists with `filenames` sorted by name.

    Raises RelabelFormatError when the file is not a list of integer lists, its length differs from the
    number of files, or (with `n_classes`) an index is out of range; the message names the row and file."""
    path = Path(path)
    payload = _load_json(path)
    if not isinstance(payload, list):
        raise RelabelFormatError(f"{path}: real.json must be a list of label lists")
    names = sorted(filenames)
    if len(payload) != len(names):
        raise RelabelFormatError(f"{path}: {len(payload)} label lists for {len(names)} images; ReaL lists must "
                                 f"match the images one to one in sorted-filename order")
    out = {}
    for row, (name, labels) in enumerate(zip(names, payload)):
        if not isinstance(labels, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in labels):
            raise RelabelFormatError(f"{path}: row {row} ({name}): expected a list of class indices")
        if n_classes is not None and any(not 0 <= i < n_classes for i in labels):
            raise RelabelFormatError(f"{path}: row {row} ({name}): index outside 0..{n_classes - 1}")
        out[name] = sorted(set(labels))
    return out


def write_real_json(path: str | Path, labels_by_file: dict[str, list[int]]) -> Path:
    """Write the label lists in sorted-filename order (atomically); returns path."""
    return atomic_write_json(path, [list(map(int, labels_by_file[name])) for name in sorted(labels_by_file)])
