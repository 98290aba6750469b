"""``auto_labels.csv`` in the seed layout: no header, one row per image, ``filename,label_1,...,label_R``.

Labels are class *names* (full or short, see ``labelers.formats.class_names``), one per round.
The seed's trainers read this file unchanged; rows keep the order they were written in.
"""
from __future__ import annotations

import csv
from pathlib import Path

from labelers.formats.class_names import display_names


# Written by the VLM labeler for a round whose answer stayed unparseable after every re-ask.
UNPARSEABLE = "unparseable"


class AutoLabelsError(ValueError):
    """An ``auto_labels.csv`` row is malformed or names an unknown class."""


def write_auto_labels(path: str | Path, rows: list[tuple[str, list[str]]]) -> Path:
    """Write ``rows`` of (filename, [label_1, ..., label_R]) to ``path`` without a header; return the path.

    Raises AutoLabelsError (naming the row) when a filename is empty or rows have different R.
    The file is written to a temporary sibling first and renamed, so a crash never leaves half a file.
    """
    path = Path(path)
    rounds = None
    for number, (filename, labels) in enumerate(rows, start=1):
        if not str(filename).strip():
            raise AutoLabelsError(f"{path}: row {number} has an empty filename")
        if rounds is None:
            rounds = len(labels)
        elif len(labels) != rounds:
            raise AutoLabelsError(
                f"{path}: row {number} ({filename}) has {len(labels)} labels, earlier rows have {rounds}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        for filename, labels in rows:
            writer.writerow([str(filename), *map(str, labels)])
    tmp.replace(path)
    return path


def read_auto_labels(path: str | Path) -> list[tuple[str, list[str]]]:
    """Return the rows of ``path`` as (filename, [label_1, ..., label_R]) in file order.

    Blank lines are skipped. Raises FileNotFoundError if the file is missing and AutoLabelsError
    (naming file and line) for a row without labels, an empty filename or a row whose number of
    labels differs from the first row's.
    """
    path = Path(path)
    rows: list[tuple[str, list[str]]] = []
    rounds = None
    with open(path, newline="", encoding="utf-8") as fh:
        for line_number, record in enumerate(csv.reader(fh), start=1):
            if not record or all(not cell.strip() for cell in record):
                continue
            filename, labels = record[0].strip(), [cell.strip() for cell in record[1:]]
            if not filename:
                raise AutoLabelsError(f"{path}: line {line_number} has an empty filename")
            if not labels or any(not label for label in labels):
                raise AutoLabelsError(f"{path}: line {line_number} ({filename}) has an empty label")
            if rounds is None:
                rounds = len(labels)
            elif len(labels) != rounds:
                raise AutoLabelsError(f"{path}: line {line_number} ({filename}) has {len(labels)} labels, "
                                      f"line 1 has {rounds}")
            rows.append((filename, labels))
    return rows


def labels_to_indices(rows: list[tuple[str, list[str]]], class_names: list[str],
                      long_label: bool = True, path: str | Path | None = None) -> list[tuple[str, list[int]]]:
    """Map each row's label names to class indices (0..K-1) through the names a labeler would write.

    ``long_label`` must match the labeling run (full names vs last-word names). Matching is exact
    after stripping and lowercasing. The label ``unparseable`` becomes -1 (drop it before training)
    unless a class has that name. Raises AutoLabelsError naming the row and the unknown name,
    and ShortNameCollision when short names would merge classes.
    """
    names = display_names(class_names, long_label)
    index = {UNPARSEABLE: -1}
    index.update({name.strip().lower(): i for i, name in enumerate(names)})
    where = f"{path}: " if path else ""
    out = []
    for number, (filename, labels) in enumerate(rows, start=1):
        try:
            out.append((filename, [index[label.strip().lower()] for label in labels]))
        except KeyError as err:
            raise AutoLabelsError(f"{where}row {number} ({filename}) has unknown class name {err.args[0]!r}; "
                                  f"known: {', '.join(names)}") from None
    return out
