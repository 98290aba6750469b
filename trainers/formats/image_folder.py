"""ImageFolder trees: ``root/<class name>/<image file>``, the layout torchvision's ImageFolder reads."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from trainers.labelset import LabelSet

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class ImageFolderError(ValueError):
    """The folder is not a class-per-subfolder tree, or rows cannot be placed in one."""


def is_image_folder(root: str | Path) -> bool:
    """Return True when ``root`` has at least one subfolder holding images (and so reads as ImageFolder)."""
    root = Path(root)
    return root.is_dir() and any(p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir())
                                 for p in root.iterdir())


def list_images(root: str | Path) -> list[Path]:
    """Return the image files directly under ``root``, sorted by name."""
    return sorted(p for p in Path(root).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image_folder(root: str | Path, class_names: list[str] | None = None) -> LabelSet:
    """Return a LabelSet of every image under ``root/<class>/``; names are ``<class>/<file>``.

    Classes are the sorted subfolder names unless ``class_names`` gives them (then every subfolder
    must be one of them). Raises ImageFolderError when there is no class subfolder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and list_images(p))
    if not folders:
        raise ImageFolderError(f"{root}: no class subfolders with images (expected {root}/<class>/<image>)")
    names = list(class_names) if class_names else folders
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise ImageFolderError(f"{root}: subfolder {unknown[0]!r} is not one of the classes {', '.join(names)}")
    paths, labels = [], []
    for k, name in enumerate(names):
        if (root / name).is_dir():
            files = list_images(root / name)
            paths += files
            labels += [k] * len(files)
    return LabelSet(names, [f"{p.parent.name}/{p.name}" for p in paths], np.full((len(paths), 1), -1),
                    np.asarray(labels, dtype=np.int64), paths=paths, meta={"source": str(root)})


def write_image_folder_tree(root: str | Path, labels: LabelSet, link: bool = False) -> Path:
    """Copy (or symlink) each image with an ordinary label to ``root/<class>/<file>``; return root.

    Files keep their bare file name when that is unique in the export; otherwise every file is named
    after its whole name with "/" replaced by "_" (``airplane/0000.jpg`` -> ``airplane_0000.jpg``), so
    ``airplane/0000.jpg`` and ``automobile/0000.jpg`` both survive. Every target is decided and checked
    before the first file is written. Needs ``labels.paths`` or ``labels.images``; rows without an
    ordinary label are left out. Raises ImageFolderError when no row has an ordinary label or two
    images would still land on the same file.
    """
    root = Path(root)
    known = np.flatnonzero(labels.ord_labels >= 0)
    if not len(known):
        raise ImageFolderError(f"{root}: no image has an ordinary label; an ImageFolder tree sorts images by class")
    targets = _targets(root, labels, known)
    for i, target in zip(known, targets):
        _place(labels, i, target, link)
    return root


def _file_names(labels: LabelSet, rows: np.ndarray) -> list[str]:
    """Return one file name per row: the bare name when unique across ``rows``, else the flattened whole name."""
    bare = [Path(labels.names[i]).name for i in rows]
    if len(set(bare)) < len(bare):
        bare = ["_".join(part for part in Path(labels.names[i]).parts if part not in ("/", "..", "."))
                for i in rows]
    if labels.paths is None:  # pixels from arrays are written as PNG
        bare = [name if Path(name).suffix.lower() in IMAGE_SUFFIXES else name + ".png" for name in bare]
    return bare


def _targets(root: Path, labels: LabelSet, rows: np.ndarray) -> list[Path]:
    """Return the target file of every row; raise ImageFolderError before any copy when two coincide."""
    targets = [root / labels.class_names[labels.ord_labels[i]] / name
               for i, name in zip(rows, _file_names(labels, rows))]
    seen: dict[Path, str] = {}
    for i, target in zip(rows, targets):
        if target in seen:
            raise ImageFolderError(f"{root}: images {seen[target]!r} and {labels.names[i]!r} would both be "
                                   f"{target}; nothing was written")
        seen[target] = labels.names[i]
    return targets


def _place(labels: LabelSet, i: int, target: Path, link: bool) -> None:
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    if labels.paths is None:
        Image.fromarray(np.asarray(labels.images[i]).squeeze()).save(target)
    elif link:
        target.unlink(missing_ok=True)
        target.symlink_to(Path(labels.paths[i]).resolve())
    else:
        shutil.copyfile(labels.paths[i], target)
