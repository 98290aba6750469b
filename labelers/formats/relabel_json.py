"""The relabeler's JSON (the CS570 seed's format) and its class-index file.

Labels: `{"data": [{"img_path": "<path>", "labels": [<int>, ...]}, ...]}`; indices follow the class-index
file, ImageNet's `imagenet_class_index.json` shape `{"0": ["n01440764", "tench"], ...}` (a plain JSON list
of names is accepted too). An empty label list is allowed in the file (ReaL's "unscored").
Writing goes to a temporary file renamed into place, so a crash never leaves half a file.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


class RelabelFormatError(ValueError):
    """A label file cannot be read; the message names the file and the row."""


@dataclass
class ClassIndex:
    """Class `i` has id `ids[i]` (e.g. a WordNet id) and display name `names[i]`."""

    ids: list[str]
    names: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def read_class_index(path: str | Path) -> ClassIndex:
    """Read a class-index file; raises RelabelFormatError when keys are not 0..K-1 or entries malformed."""
    path = Path(path)
    payload = _load_json(path)
    if isinstance(payload, list):
        if not all(isinstance(n, str) for n in payload):
            raise RelabelFormatError(f"{path}: a class-index list must hold class names (strings)")
        return ClassIndex(list(payload), list(payload))
    if not isinstance(payload, dict):
        raise RelabelFormatError(f"{path}: expected {{\"0\": [id, name], ...}} or a list of names")
    if sorted(payload, key=lambda k: int(k) if str(k).isdigit() else -1) != [str(i) for i in range(len(payload))]:
        raise RelabelFormatError(f"{path}: keys must be \"0\"..\"{len(payload) - 1}\"")
    ids, names = [], []
    for i in range(len(payload)):
        entry = payload[str(i)]
        if isinstance(entry, str):
            entry = [entry, entry]
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
            raise RelabelFormatError(f"{path}: class {i}: expected [id, name], got {entry!r}")
        ids.append(entry[0])
        names.append(entry[1])
    return ClassIndex(ids, names)


def write_class_index(path: str | Path, index: ClassIndex) -> Path:
    return atomic_write_json(path, {str(i): [c, n] for i, (c, n) in enumerate(zip(index.ids, index.names))})


def read_relabel_json(path: str | Path, n_classes: int | None = None) -> list[tuple[str, list[int]]]:
    """Return [(img_path, labels)] in file order.

    Raises RelabelFormatError naming the file and row for a missing `data` list, a row without `img_path`
    or `labels`, or (with `n_classes`, the class-index length) an index outside [0, n_classes)."""
    path = Path(path)
    payload = _load_json(path)
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise RelabelFormatError(f"{path}: expected {{\"data\": [{{\"img_path\": ..., \"labels\": [...]}}, ...]}}")
    rows = []
    for number, row in enumerate(payload["data"]):
        where = f"{path}: row {number}"
        if not isinstance(row, dict) or not isinstance(row.get("img_path"), str):
            raise RelabelFormatError(f"{where}: no 'img_path' string")
        labels = row.get("labels")
        if not isinstance(labels, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in labels):
            raise RelabelFormatError(f"{where} ({row['img_path']}): 'labels' must be a list of class indices")
        if n_classes is not None:
            bad = [i for i in labels if not 0 <= i < n_classes]
            if bad:
                raise RelabelFormatError(f"{where} ({row['img_path']}): label {bad[0]} is outside the class-index "
                                         f"file (classes 0..{n_classes - 1})")
        rows.append((row["img_path"], sorted(set(labels))))
    return rows


def read_holdout_originals(path: str | Path, n_classes: int | None = None):
    """Return the optional single label the dataset gave each held-out image (key `original`, an int per row)
    as an int64 array, or None when no row has one.

    A holdout can carry both: `labels` (the true set) and `original` (the noisy single label), so rounds are
    validated against keep-original as it really is. Raises RelabelFormatError naming the row when only some
    rows have one or an index is outside the class-index file."""
    import numpy as np

    path = Path(path)
    rows = _load_json(path)["data"]
    given = [isinstance(row, dict) and "original" in row for row in rows]
    if not any(given):
        return None
    out = []
    for number, row in enumerate(rows):
        value = row.get("original") if isinstance(row, dict) else None
        if not isinstance(value, int) or isinstance(value, bool):
            raise RelabelFormatError(f"{path}: row {number}: 'original' must be a class index on every row once "
                                     f"one row has it (got {value!r})")
        if n_classes is not None and not 0 <= value < n_classes:
            raise RelabelFormatError(f"{path}: row {number}: original {value} is outside the class-index file "
                                     f"(classes 0..{n_classes - 1})")
        out.append(value)
    return np.asarray(out, np.int64)


def write_relabel_json(path: str | Path, rows: list[tuple[str, list[int]]], **extra) -> Path:
    """Write rows [(img_path, labels)] (and any extra top-level keys, e.g. scores) atomically; returns path.

    An img_path naming a file from the current folder is written relative to the JSON's folder, where the
    reader resolves it: the file stays right wherever the command ran. Other references are kept as given."""
    folder = Path(path).parent.absolute()
    data = [{"img_path": _portable(str(p), folder), "labels": [int(i) for i in labels]} for p, labels in rows]
    return atomic_write_json(path, {"data": data, **extra})


def _portable(image: str, folder: Path) -> str:
    return os.path.relpath(Path(image).absolute(), folder) if Path(image).is_file() else image


def image_identity(image: str, json_path: str | Path) -> str:
    """Return the normalised absolute path ``image`` of the JSON at ``json_path`` names (resolved from the
    JSON's folder, as the reader does), or ``image`` unchanged when no such file exists: the key two label
    files written from different folders are matched by."""
    found = Path(image) if Path(image).is_absolute() else Path(json_path).parent / image
    return str(found.resolve()) if found.is_file() else image


def atomic_write_json(path: str | Path, payload) -> Path:
    """Write JSON to a temporary file in the same folder and rename it over `path`; returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(payload, out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RelabelFormatError(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise RelabelFormatError(f"{path}: not valid JSON ({err})") from None
