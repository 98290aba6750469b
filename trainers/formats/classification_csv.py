"""Classification CSV: a header ``path,label`` and one row per image with its class name.

One rule for the path column, both ways: a relative path is relative to the CSV's own folder (not to
the working directory), so the CSV can be read from anywhere and moved together with its images.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from trainers.labelset import LabelSet


class ClassificationCsvError(ValueError):
    """The CSV lacks its header columns or names an unknown class."""


def write_classification_csv(path: str | Path, labels: LabelSet) -> Path:
    """Write one ``path,label`` row per image with a known ordinary label; return the CSV path.

    The path column holds each image file relative to the CSV's folder (``labels.paths``; without
    files, the LabelSet names). Raises ClassificationCsvError when no row has an ordinary label
    (complementary labels do not fit this format).
    """
    folder = Path(path).absolute().parent
    paths = [os.path.relpath(Path(p).absolute(), folder) for p in labels.paths] if labels.paths is not None \
        else list(labels.names)
    known = np.flatnonzero(labels.ord_labels >= 0)
    if not len(known):
        raise ClassificationCsvError(f"{path}: no image has an ordinary label; a classification CSV cannot hold "
                                     "complementary labels (export to auto_labels.csv or a libcll pickle instead)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "label"])
        for i in known:
            writer.writerow([paths[i], labels.class_names[labels.ord_labels[i]]])
    return path


def read_classification_csv(path: str | Path, class_names: list[str] | None = None) -> LabelSet:
    """Return a LabelSet of the CSV's rows; ``paths`` are resolved against the CSV's folder.

    Class names default to the sorted distinct labels. Raises ClassificationCsvError naming the line
    for a missing column or an unknown class.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise ClassificationCsvError(f"{path}: needs a header with columns 'path' and 'label', "
                                         f"got {reader.fieldnames}")
        rows = [(line, row["path"], row["label"]) for line, row in enumerate(reader, start=2)]
    names = list(class_names) if class_names else sorted({label for _, _, label in rows})
    index = {name: i for i, name in enumerate(names)}
    ord_labels = []
    for line, image, label in rows:
        if label not in index:
            raise ClassificationCsvError(f"{path}: line {line} ({image}) has unknown class {label!r}; "
                                         f"known: {', '.join(names)}")
        ord_labels.append(index[label])
    files = [Path(image) if Path(image).is_absolute() else path.parent / image for _, image, _ in rows]
    return LabelSet(names, [image for _, image, _ in rows], np.full((len(rows), 1), -1), np.asarray(ord_labels),
                    paths=files, meta={"source": str(path)})
