"""Scenes with a known multi-label truth, built from real single-object images (CIFAR-10, MNIST, ...).

There is no real multi-label image set here, so the relabeler is measured on canvases holding 1 or more
real objects side by side: the truth is the set of the objects' classes, the "original" single label the
first object's (optionally replaced by a random wrong class at `noise` rate, as single-label datasets are).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image

BACKGROUND = (124, 116, 104)  # the ImageNet mean colour: a neutral canvas
OBJECT_SETS = ("cifar10", "mnist", "fashion-mnist")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
ObjectImage = Union[Path, np.ndarray]  # a file, or a uint8 array (MNIST-style sets come as arrays)


class ObjectSetMissing(RuntimeError):
    """An object set's files are not installed (the message says how to install them)."""


def load_objects(name: str, per_class: int, split: str = "train") -> tuple[list[ObjectImage], np.ndarray, tuple]:
    """Return (object images, labels, class names) of the first `per_class` images of each class of `name`
    (one of OBJECT_SETS) in `split`; raises ValueError for an unknown name, ObjectSetMissing when the set's files
    are not installed (Fashion-MNIST: `make setup-fashion-mnist`)."""
    from ..sample_data import CIFAR10_CLASSES, cifar10_subset, load_mnist

    if name == "cifar10":
        paths, labels = cifar10_subset(split, per_class=per_class)
        return list(paths), labels, tuple(CIFAR10_CLASSES)
    if name == "mnist":
        images, labels = load_mnist(split)
        classes = tuple(str(d) for d in range(10))
    elif name == "fashion-mnist":
        if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
            raise ObjectSetMissing(f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: install the Debian package "
                                   f"dataset-fashion-mnist (`make setup-fashion-mnist`, or "
                                   f"`apt-get install dataset-fashion-mnist` as root)")
        images, labels = load_mnist(split, root=FASHION_MNIST_DIR)
        classes = FASHION_MNIST_CLASSES
    else:
        raise ValueError(f"unknown object set {name!r}; choose from {', '.join(OBJECT_SETS)}")
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(classes))])
    return list(images[keep]), labels[keep], classes


def _open(item: ObjectImage) -> Image.Image:
    """Return an object image as RGB (a file path or a uint8 array, grey or colour)."""
    return (Image.fromarray(item) if isinstance(item, np.ndarray) else Image.open(item)).convert("RGB")


@dataclass
class SceneSet:
    paths: list[Path]
    original: np.ndarray  # (N,) the given single label
    truth: list[list[int]]  # the classes really present


def side_by_side(images: Sequence[Image.Image], tile: int = 32) -> Image.Image:
    """Return one canvas (len(images)*tile x tile) with the images resized to `tile` and placed left to right."""
    canvas = Image.new("RGB", (tile * len(images), tile), BACKGROUND)
    for i, image in enumerate(images):
        canvas.paste(image.convert("RGB").resize((tile, tile), Image.BILINEAR), (i * tile, 0))
    return canvas


def pair_scenes(paths: Sequence[Path], labels: Sequence[int], n_scenes: int, out_dir: Path, two_share: float = 0.5,
                n_classes: int | None = None, noise: float = 0.0, tile: int = 32, seed: int = 0) -> SceneSet:
    """Write `n_scenes` PNG canvases of two tiles to `out_dir` and return them with their truth.

    A two-object scene (share `two_share`) holds two images of different classes; a single-object scene
    holds one image and the empty canvas beside it (same size, so position does not give the count away).
    The original label is the left object's class, replaced by a uniformly drawn other class with
    probability `noise`."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    k = n_classes or int(labels.max()) + 1
    out_dir.mkdir(parents=True, exist_ok=True)
    scene_paths, original, truth = [], [], []
    for s in range(n_scenes):
        first = int(rng.integers(len(paths)))
        chosen = [first]
        if rng.random() < two_share:
            others = np.flatnonzero(labels != labels[first])
            chosen.append(int(rng.choice(others)))
        tiles = [Image.open(paths[i]) for i in chosen]
        if len(tiles) == 1:
            tiles.append(Image.new("RGB", (tile, tile), BACKGROUND))
        order = [0, 1] if rng.random() < 0.5 or len(chosen) == 1 else [1, 0]
        path = out_dir / f"scene_{s:05d}.png"
        side_by_side([tiles[o] for o in order], tile).save(path)
        _record(scene_paths, original, truth, path, int(labels[first]), [int(labels[i]) for i in chosen],
                k, noise, rng)
    return SceneSet(scene_paths, np.asarray(original, np.int64), truth)



def _record(scene_paths, original, truth, path, given: int, present: list[int], k: int, noise: float, rng) -> None:
    """Append one scene: its path, its given single label (flipped to another class with probability `noise`)
    and its true label set."""
    if rng.random() < noise:
        given = int(rng.choice([c for c in range(k) if c != given]))
    scene_paths.append(path)
    original.append(given)
    truth.append(sorted(set(present)))

def compose_scenes(paths: Sequence[ObjectImage], labels: Sequence[int], n_scenes: int, out_dir: Path,
                   count_probs: Sequence[float] = (0.84, 0.10, 0.04, 0.02), canvas: int = 96,
                   dominant: tuple[float, float] = (0.55, 0.8), small: tuple[float, float] = (0.3, 0.45),
                   noise: float = 0.0, n_classes: int | None = None, seed: int = 0) -> SceneSet:
    """Write `n_scenes` canvases of 1-4 real objects of distinct classes and return them with their truth.

    `paths` are the objects' image files or uint8 arrays (load_objects gives CIFAR-10, MNIST, Fashion-MNIST).

    The number of objects follows `count_probs` (default: 84 % single-object, as ImageNet where ReaL finds
    about 16 % with two or more labels). The first object is dominant (side a uniform fraction `dominant` of
    the canvas), the others smaller (`small`), all at uniform positions; a later object may cover part of an
    earlier one (occlusion is not checked: the truth can then name a barely visible object). The original label is
    the dominant object's class, replaced by another class with probability `noise`."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    k = n_classes or int(labels.max()) + 1
    probs = np.asarray(count_probs, float) / np.sum(count_probs)
    out_dir.mkdir(parents=True, exist_ok=True)
    scene_paths, original, truth = [], [], []
    for s in range(n_scenes):
        count = int(rng.choice(len(probs), p=probs)) + 1
        chosen: list[int] = []
        while len(chosen) < count:
            i = int(rng.integers(len(paths)))
            if all(labels[i] != labels[j] for j in chosen):
                chosen.append(i)
        image = Image.new("RGB", (canvas, canvas), BACKGROUND)
        for rank, i in enumerate(chosen):
            low, high = dominant if rank == 0 else small
            side = max(8, int(rng.uniform(low, high) * canvas))
            x, y = (int(rng.integers(0, canvas - side + 1)) for _ in range(2))
            image.paste(_open(paths[i]).resize((side, side), Image.BILINEAR), (x, y))
        path = out_dir / f"scene_{s:05d}.png"
        image.save(path)
        _record(scene_paths, original, truth, path, int(labels[chosen[0]]), [int(labels[i]) for i in chosen],
                k, noise, rng)
    return SceneSet(scene_paths, np.asarray(original, np.int64), truth)
