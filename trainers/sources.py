"""Turning ``--data`` / ``--label-path`` into training and test LabelSets.

``--data`` is read by ``trainers.datasets`` (built-in datasets, image folders, CSVs, pickles, ``.npz``,
VLM runs); ``--label-path`` is attached by ``trainers.label_files``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from trainers.datasets import BUILTIN, DataSourceError, load_dataset  # noqa: F401  (re-exported)
from trainers.formats.image_folder import ImageFolderError
from trainers.label_files import attach_labels  # noqa: F401  (re-exported)
from trainers.labelset import LabelSet, LabelSetError

log = logging.getLogger(__name__)


@dataclass
class Sources:
    """What training reads: the training LabelSet, an optional test LabelSet, and the input kind."""

    train: LabelSet
    test: LabelSet | None
    kind: str  # "images" or "features"


def parse_classes(text: str | None) -> list[str] | None:
    """Return class names from ``--classes``: a file with one name per line, or a comma-separated list."""
    if not text:
        return None
    path = Path(text)
    if path.is_file():
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [name.strip() for name in text.split(",") if name.strip()]


def dataset_or_image_root(data: str | None, label_path: str | Path | None, classes: list[str] | None):
    """Return (base, test) LabelSets of ``--data``, or (None, None) when ``--data`` is only where a Label Studio
    export's images live. Label Studio serves images from a subfolder of its document root
    (``<root>/pets/*.jpg``), so a root that fails to read as a class tree, or reads as a tree of one class
    (no classifier has one class), is taken as that folder: the export's own labels name the classes."""
    if not data:
        return None, None
    from_label_studio = bool(label_path) and Path(label_path).suffix == ".json" and Path(data).is_dir()
    try:
        base, test = load_dataset(data, classes)
    except (ImageFolderError, DataSourceError) as err:
        if not from_label_studio:
            raise
        reason = str(err)
    else:
        if not (from_label_studio and len(base.class_names) == 1):
            return base, test
        reason = f"one subfolder, {base.class_names[0]!r}"
    log.warning("%s is not a class tree (%s): reading the images %s names from under it", data, reason,
                Path(label_path).name)
    return None, None


def load_sources(data: str | None, label_path: str | None = None, ordinary: bool = False, long_label: bool = True,
                 classes: list[str] | None = None, test_data: str | None = None, cl_control: str | None = None,
                 label_control: str | None = None, image_key: str | None = None) -> Sources:
    """Return the training (and test) LabelSets for ``--data`` + ``--label-path``.

    Raises DataSourceError / LabelSetError / FileNotFoundError with the offending file and row.
    """
    if not data and not label_path:
        raise DataSourceError("give --data (a dataset) and/or --label-path (a label file)")
    base, test = dataset_or_image_root(data, label_path, classes)
    if classes and base is not None and base.class_names and base.class_names != classes:
        if len(base.class_names) != len(classes):
            raise DataSourceError(f"--classes lists {len(classes)} classes but {data} has {len(base.class_names)}")
        base = replace(base, class_names=list(classes))
    train = base
    if label_path:
        roots = [Path(data)] if data and Path(data).is_dir() else []
        train = attach_labels(base, label_path, ordinary, long_label, classes, roots, cl_control, label_control,
                              image_key)
    if test_data:
        test, extra = load_dataset(test_data, train.class_names or classes)
        if extra is not None:
            log.info("%s also has a test split; using its training split as the test set", test_data)
    if test is not None and test.class_names != train.class_names:
        if len(test.class_names) != len(train.class_names):
            raise LabelSetError(f"test set has {len(test.class_names)} classes, training set {len(train.class_names)}")
        test = replace(test, class_names=train.class_names)
    kind = "features" if train.features is not None else "images"
    if kind == "images" and train.images is None and train.paths is None:
        raise DataSourceError("the labels name images but no image files or arrays were found; pass --data")
    return Sources(train, test, kind)
