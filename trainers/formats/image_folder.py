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
    """Copy (or symlink) each image with an ordinary label to ``root/<class>/<file name>``; return root.

    Needs ``labels.paths`` or ``labels.images``. Rows without an ordinary label are left out. Raises
    ImageFolderError when no row has an ordinary label or two images would land on the same file.
    """
    from PIL import Image

    root = Path(root)
    known = np.flatnonzero(labels.ord_labels >= 0)
    if not len(known):
        raise ImageFolderError(f"{root}: no image has an ordinary label; an ImageFolder tree sorts images by class")
    seen: dict[Path, str] = {}
    for i in known:
        folder = root / labels.class_names[labels.ord_labels[i]]
        source = labels.paths[i] if labels.paths is not None else None
        file_name = Path(labels.names[i]).name
        if source is None and Path(file_name).suffix.lower() not in IMAGE_SUFFIXES:
            file_name += ".png"
        target = folder / file_name
        if target in seen:
            raise ImageFolderError(f"{root}: images {seen[target]!r} and {labels.names[i]!r} would both be {target}")
        seen[target] = labels.names[i]
        folder.mkdir(parents=True, exist_ok=True)
        if source is not None:
            if link:
                target.unlink(missing_ok=True)
                target.symlink_to(Path(source).resolve())
            else:
                shutil.copyfile(source, target)
        else:
            Image.fromarray(np.asarray(labels.images[i]).squeeze()).save(target)
    return root
