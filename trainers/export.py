"""``labelloop export``: read labels in any supported format, write them in another.

Sources: a Label Studio JSON export, a VLM run (directory or ``labels.jsonl``), ``auto_labels.csv``
(with ``--data`` for the images), a libcll pickle, a classification CSV (``path,label``) or an
ImageFolder tree. Targets: libcll pickle (``.pkl``), ``auto_labels.csv``, classification CSV, an
ImageFolder tree (a directory), or a Label Studio import file (``.json``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from trainers.labelset import LabelSet

log = logging.getLogger(__name__)

FORMATS = ("libcll", "auto-labels", "csv", "imagefolder", "label-studio", "relabel-json")


class ExportError(ValueError):
    """The labels cannot be written in the requested format; the message says why and what to use."""


def is_classification_csv(path: Path) -> bool:
    """Return True when ``path`` is a CSV whose header is ``path,label`` (auto_labels.csv has no header)."""
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().strip().lower().replace(" ", "")
    return header.split(",")[:2] == ["path", "label"]


def read_any(source: str | Path, data: str | None = None, classes: list[str] | None = None,
             long_label: bool = True, ordinary: bool = False, cl_control: str | None = None,
             label_control: str | None = None, image_key: str | None = None,
             image_option: str = "--data", mode_checked: bool = False) -> LabelSet:
    """Return the LabelSet in ``source`` (any supported format); ``data`` gives the images for label-only files.
    ``image_option``: the calling command's option for ``data``, named by the errors of a label-only file;
    ``mode_checked``: see ``attach_labels``."""
    from trainers.sources import attach_labels, dataset_or_image_root, load_dataset

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"not found: {path}")
    base = dataset_or_image_root(data, path, classes)[0]
    dataset_like = path.is_dir() and not (path / "labels.jsonl").exists() or path.suffix == ".npz" or (
        path.suffix == ".csv" and is_classification_csv(path))
    if dataset_like:
        return load_dataset(str(path), classes)[0]
    roots = [Path(data)] if data and Path(data).is_dir() else []
    return attach_labels(base, path, ordinary, long_label, classes, roots, cl_control, label_control, image_key,
                         image_option, mode_checked)


def target_format(target: str | Path, fmt: str | None) -> str:
    """Return the export format: ``fmt`` when given, else guessed from the target's suffix/name."""
    if fmt:
        key = fmt.strip().lower().replace("_", "-")
        if key not in FORMATS:
            raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return key
    target = Path(target)
    if target.suffix in (".pkl", ".pickle"):
        return "libcll"
    if target.suffix == ".json":
        return "label-studio"
    if target.suffix == ".csv":
        return "auto-labels" if target.name.startswith("auto_labels") else "csv"
    if not target.suffix:
        return "imagefolder"
    raise ExportError(f"cannot tell the format of {target}; pass --format ({', '.join(FORMATS)})")


def image_array(labels: LabelSet, image_size: int | None = None) -> np.ndarray:
    """Return uint8 N x H x W x C images (from arrays or files); files must share a size unless ``image_size``.

    Raises ExportError naming the first file whose size differs.
    """
    if labels.images is not None:
        images = np.asarray(labels.images)
        return images if image_size is None else _resize_all(images, image_size)
    if labels.paths is None:
        raise ExportError("a libcll pickle stores pixels, and these labels have no images (pass --data)")
    from labelers.images import load_image

    out, size = [], None
    for name, path in zip(labels.names, labels.paths):
        image = load_image(Path(path), name=str(path))
        if image_size:
            image = image.resize((image_size, image_size))
        elif size is None:
            size = image.size
        elif image.size != size:
            raise ExportError(f"{path}: image is {image.size[0]}x{image.size[1]} but earlier ones are "
                              f"{size[0]}x{size[1]}; pass --image-size to resize all")
        out.append(np.asarray(image, dtype=np.uint8))
    return np.stack(out)


def write_relabel_target(labels: LabelSet, target: str | Path) -> Path:
    """Write the relabeler's JSON (the CS570 seed's layout: {"data": [{"img_path", "labels": [int]}]}) with
    its class-index file `<stem>_class_index.json` beside it; returns the JSON's path.

    Images without an ordinary label are left out (the relabeler starts from one label per image) and counted
    in a warning; raises ExportError when no image has one."""
    from labelers.formats.relabel_json import ClassIndex, write_class_index, write_relabel_json

    target = Path(target)
    known = np.flatnonzero(labels.ord_labels >= 0)
    if not len(known):
        raise ExportError("no image has an ordinary label; the relabeler JSON holds one original label per image")
    if len(known) < len(labels.names):
        first = labels.names[int(np.flatnonzero(labels.ord_labels < 0)[0])]
        log.warning("relabel JSON: %d of %d images have no ordinary label and were left out (first: %s)",
                    len(labels.names) - len(known), len(labels.names), first)
    refs = labels.meta.get("refs")
    images = [refs[i] if refs else str(labels.paths[i]) if labels.paths is not None else labels.names[i] for i in known]
    write_class_index(target.with_name(f"{target.stem}_class_index.json"),
                      ClassIndex(list(labels.class_names), list(labels.class_names)))
    return write_relabel_json(target, [(image, [int(labels.ord_labels[i])]) for image, i in zip(images, known)])


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im.squeeze()).resize((size, size))) for im in images])


def _auto_label_rows(labels: LabelSet, long_label: bool, num_cl: int | None) -> list[tuple[str, list[str]]]:
    from labelers.formats.class_names import display_names

    names = display_names(labels.class_names, long_label)
    if labels.has_cls:
        columns = labels.cl_labels if not num_cl else labels.cl_labels[:, :num_cl]
        width = columns.shape[1]
        rows, dropped = [], 0
        for name, row in zip(labels.names, columns):
            if (row < 0).any():
                if not num_cl and (row >= 0).any():
                    raise ExportError(f"image {name!r} has {int((row >= 0).sum())} complementary labels, others "
                                      f"{width}; auto_labels.csv needs the same count per row (pass --num-cl)")
                dropped += 1
                continue
            rows.append((name, [names[c] for c in row]))
        if dropped:
            log.warning("%d images with fewer than %d complementary labels were left out", dropped, width)
        return rows
    return [(name, [names[y]]) for name, y in zip(labels.names, labels.ord_labels) if y >= 0]


def export(labels: LabelSet, target: str | Path, fmt: str | None = None, long_label: bool = True,
           image_size: int | None = None, num_cl: int | None = None, cl_control: str = "complementary",
           label_control: str = "label", link: bool = False) -> Path:
    """Write ``labels`` to ``target`` in ``fmt`` (guessed from the target when None); return what was written."""
    from labelers.formats.auto_labels import write_auto_labels
    from labelers.formats.label_studio import LSTask, write_label_studio_tasks
    from trainers.formats.classification_csv import write_classification_csv
    from trainers.formats.image_folder import write_image_folder_tree
    from trainers.formats.libcll_pickle import write_libcll_pickle

    fmt = target_format(target, fmt)
    if fmt == "libcll":
        if not labels.has_cls and not labels.has_true_labels:
            raise ExportError("no labels to export")
        kept = labels.keep_cls(num_cl)
        return write_libcll_pickle(target, kept, image_array(kept, image_size))
    if fmt == "auto-labels":
        return write_auto_labels(target, _auto_label_rows(labels, long_label, num_cl))
    if fmt == "csv":
        return write_classification_csv(target, labels)
    if fmt == "imagefolder":
        return write_image_folder_tree(target, labels, link=link)
    if fmt == "relabel-json":
        return write_relabel_target(labels, target)
    from trainers.labelset import merge_repeated_cls

    tasks = []
    refs = labels.meta.get("refs")
    cl_sets, _ = merge_repeated_cls(labels.cl_labels)
    for i, name in enumerate(labels.names):
        chosen = {}
        if labels.ord_labels[i] >= 0:
            chosen[label_control] = [labels.class_names[labels.ord_labels[i]]]
        cls = [labels.class_names[c] for c in cl_sets[i] if c >= 0]
        if cls:
            chosen[cl_control] = cls
        image = refs[i] if refs else str(labels.paths[i]) if labels.paths is not None else name
        tasks.append(LSTask(None, image, chosen))
    return write_label_studio_tasks(target, tasks)
