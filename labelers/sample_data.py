"""Locate and unpack the sample datasets (MNIST IDX files, CIFAR-10 JPEG tarball).

The data live outside the repository (``shared/data`` next to the checkout, or wherever
``LABELLOOP_SAMPLE_DATA`` points). CIFAR-10 is extracted once into the user cache.
"""
from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

import numpy as np
from filelock import FileLock

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


class SampleDataMissing(FileNotFoundError):
    """The sample data folder could not be found."""


def sample_data_dir() -> Path:
    """Return the folder holding ``mnist/`` and ``cifar10/``; raise SampleDataMissing if none exists."""
    here = Path(__file__).resolve().parent.parent
    candidates = [os.environ.get("LABELLOOP_SAMPLE_DATA"), here.parent / "shared" / "data",
                  here / "shared" / "data", Path("/work/shared/data")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "cifar10").is_dir():
            return Path(candidate)
    raise SampleDataMissing(
        "sample data not found; set LABELLOOP_SAMPLE_DATA to the folder holding mnist/ and cifar10/")


def cache_dir() -> Path:
    """Return labelloop's user cache folder (``$LABELLOOP_CACHE`` or ``~/.cache/labelloop``)."""
    path = Path(os.environ.get("LABELLOOP_CACHE", Path.home() / ".cache" / "labelloop"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cifar10_root() -> Path:
    """Return the extracted CIFAR-10 folder with ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``."""
    target = cache_dir() / "cifar10-jpg"
    done = target / ".complete"
    with FileLock(str(target) + ".lock"):
        if not done.exists():
            archive = sample_data_dir() / "cifar10" / "cifar10-jpg.tar.gz"
            target.mkdir(parents=True, exist_ok=True)
            with tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
                tar.extractall(target, members=members, filter="data")
            done.touch()
    return target


def cifar10_subset(split: str, per_class: int, offset: int = 0) -> tuple[list[Path], np.ndarray]:
    """Return (paths, labels) of images ``offset .. offset+per_class-1`` of every class, in class order."""
    root = cifar10_root() / split
    paths, labels = [], []
    for label, name in enumerate(CIFAR10_CLASSES):
        files = sorted((root / name).glob("*.jpg"))[offset:offset + per_class]
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        return np.frombuffer(fh.read(), dtype=np.uint8, offset=header)


def load_mnist(split: str = "train", root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (images N x 28 x 28 uint8, labels N) of MNIST (or Fashion-MNIST given its ``root``)."""
    root = Path(root) if root else sample_data_dir() / "mnist"
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64)
    return images, labels


def write_image_folder(images: np.ndarray, labels: np.ndarray, class_names: list[str], root: Path) -> Path:
    """Write uint8 images as ``root/<class>/<index>.png`` (an ImageFolder tree) and return root."""
    from PIL import Image

    root = Path(root)
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / class_names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:05d}.png")
    return root
