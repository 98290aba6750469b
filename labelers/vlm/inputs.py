"""Images to label, from an image folder, a CSV file or a Label Studio JSON export.

Every source yields ``ImageItem``s with a unique ``key`` (the name written to ``auto_labels.csv``),
a local ``path`` and, when the source knows it, the ground-truth class name.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
PATH_COLUMNS = ("image", "path", "filename", "file", "image_path")
LABEL_COLUMNS = ("label", "class", "choice")


def _cifar10_train() -> tuple[list["ImageItem"], list[str]]:
    """The 50 000 CIFAR-10 training images in the original batch order, keyed by their original file names.

    That is what the seed labeled and wrote to auto_labels.csv, so `labelloop train --dataset cifar10`
    matches these rows by name.
    """
    from labelers.sample_data import CIFAR10_CLASSES, cifar10_root, sample_data_dir

    root = cifar10_root()
    with open(sample_data_dir() / "cifar10" / "train_order.csv", newline="", encoding="utf-8") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: int(r["cifar_index"]))
    return ([ImageItem(r["cifar_filename"], root / r["path"], CIFAR10_CLASSES[int(r["label"])]) for r in rows],
            list(CIFAR10_CLASSES))


# Built-in datasets by name (the seed's --dataset values that have images here).
BUILTIN = {"cifar10": _cifar10_train}


class InputError(ValueError):
    """The input source is malformed; the message names the file and the row, task or key."""


@dataclass(frozen=True)
class ImageItem:
    key: str
    path: Path
    label: str | None = None


def read_inputs(source: str | Path, class_names: list[str] | None = None,
                local_files_root: str | Path | None = None) -> tuple[list[ImageItem], list[str]]:
    """Return (items, class names) for an image folder, ``.csv`` file or Label Studio ``.json`` export.

    Class names come from ``class_names`` when given, else from the source (ImageFolder sub-folders,
    the CSV label column, the export's choices). Raises InputError when the source is missing, has
    no images, names an unknown class or gives no way to know the classes.
    """
    source = Path(source)
    if str(source).lower() in BUILTIN and not source.exists():
        items, found = BUILTIN[str(source).lower()]()
    elif source.is_dir():
        items, found = _read_folder(source)
    elif source.suffix.lower() == ".csv":
        items, found = _read_csv(source)
    elif source.suffix.lower() == ".json":
        items, found = _read_label_studio(source, local_files_root)
    elif not source.exists():
        raise InputError(f"{source}: no such file or folder")
    else:
        raise InputError(f"{source}: expected an image folder, a .csv file or a Label Studio .json export")
    if not items:
        raise InputError(f"{source}: no images found")
    names = list(class_names) if class_names else found
    if not names:
        raise InputError(f"{source}: the class names are unknown; give them with --classes")
    known = set(names)
    for item in items:
        if item.label is not None and item.label not in known:
            raise InputError(f"{source}: {item.key} has label {item.label!r}, which is not one of the classes "
                             f"{', '.join(names)}")
    return items, names


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _read_folder(root: Path) -> tuple[list[ImageItem], list[str]]:
    """ImageFolder (``root/<class>/<image>``) gives labels; a flat folder of images gives none."""
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and any(_is_image(p) for p in d.iterdir()))
    if class_dirs:
        items = [ImageItem(p.relative_to(root).as_posix(), p, d.name)
                 for d in class_dirs for p in sorted(d.iterdir()) if _is_image(p)]
        return items, [d.name for d in class_dirs]
    return [ImageItem(p.name, p) for p in sorted(root.iterdir()) if _is_image(p)], []


def _read_csv(path: Path) -> tuple[list[ImageItem], list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        path_col = next((c for c in PATH_COLUMNS if c in header), None)
        if path_col is None:
            raise InputError(f"{path}: the header needs an image column ({', '.join(PATH_COLUMNS)}); got {header}")
        label_col = next((c for c in LABEL_COLUMNS if c in header), None)
        items, seen, labels = [], set(), []
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            if not row[path_col]:
                raise InputError(f"{path}: line {line} has an empty {path_col!r}")
            image = Path(row[path_col]).expanduser()
            image = image if image.is_absolute() else path.parent / image
            label = row.get(label_col) or None if label_col else None
            items.append(_unique(ImageItem(row[path_col], image, label), seen, f"{path}: line {line}"))
            if label and label not in labels:
                labels.append(label)
    return items, sorted(labels)


def _unique(item: ImageItem, seen: set, where: str) -> ImageItem:
    if item.key in seen:
        raise InputError(f"{where}: image {item.key!r} is listed twice")
    seen.add(item.key)
    return item


def _read_label_studio(path: Path, local_files_root: str | Path | None) -> tuple[list[ImageItem], list[str]]:
    """Tasks via labelers.formats.label_studio; images resolved under the local-files root or the export's folder."""
    from labelers.formats.label_studio import (LabelStudioExportError, local_files_root_from_env,
                                               read_label_studio_export, resolve_image_path)

    try:
        tasks = read_label_studio_export(path)
    except LabelStudioExportError as exc:
        raise InputError(str(exc)) from None
    root = local_files_root or local_files_root_from_env()
    roots = [Path(root)] if root else []
    items, seen, labels = [], set(), []
    for number, task in enumerate(tasks, start=1):
        where = f"{path}: task {task.id if task.id is not None else number}"
        if urlparse(task.image).scheme in ("http", "https", "s3", "gs", "azure-blob"):
            raise InputError(f"{where}: {task.image} is remote; export with local files or download the images first")
        image = resolve_image_path(task.image, roots + [path.parent])
        if image is None:
            hint = f" under {root}" if root else " (pass --image-root or set LOCAL_FILES_DOCUMENT_ROOT)"
            raise InputError(f"{where}: image {task.image} not found{hint}")
        # ground truth: the first label of the first control that has one (Choices or Taxonomy)
        label = next((chosen[0] for chosen in task.labels.values() if chosen), None)
        items.append(_unique(ImageItem(_key_for(image, roots + [path.parent]), image, label), seen, where))
        if label and label not in labels:
            labels.append(label)
    return items, sorted(labels)


def _key_for(image: Path, roots: list[Path]) -> str:
    """The image's path under the first root holding it (unique), else its file name."""
    for root in roots:
        try:
            return image.relative_to(root).as_posix()
        except ValueError:
            continue
    return image.name
