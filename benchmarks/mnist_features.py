"""Embed an MNIST subset with EfficientNet-Lite0 through the shared cache and save an .npz.

    python -m benchmarks.mnist_features --train-per-class 2000 --test-per-class 300 --px 128

The digits (28 x 28 grey) are PNG-encoded in memory and embedded as RGB like any image, so MNIST goes
through the same embedder and cache as CIFAR-10 (benchmarks/cifar_features.py). Pool: the first
`train-per-class` training images of each digit (in file order); test: the first `test-per-class` of the
t10k set. Output: benchmarks/.work/mnist_effnet<px>_<train>x<test>.npz in the `labelloop simulate` layout.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import typer

from labelers.cache import EmbeddingCache, embed_blobs
from labelers.embedders import make_embedder
from labelers.sample_data import load_mnist

from .cifar_features import WORK

MNIST_CLASSES = [str(d) for d in range(10)]


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Return the indices of the first `per_class` rows of every class, in class order."""
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def mnist_features(train_per_class: int = 2000, test_per_class: int = 300, px: int = 128) -> Path:
    """Return the path of the feature .npz, computing (and caching) embeddings as needed."""
    out = WORK / f"mnist_effnet{px}_{train_per_class}x{test_per_class}.npz"
    if out.exists():
        return out
    WORK.mkdir(parents=True, exist_ok=True)
    embedder = make_embedder(f"efficientnet-lite0@{px}")
    cache = EmbeddingCache(WORK / "embeddings.sqlite")
    arrays = {}
    for split, per_class, prefix in (("train", train_per_class, ""), ("test", test_per_class, "test_")):
        images, labels = load_mnist(split)
        rows = first_per_class(labels, per_class)
        blobs = [_png(images[i]) for i in rows]
        result = embed_blobs(embedder, cache, blobs, [f"mnist {split} {i}" for i in rows], batch_size=50,
                             progress=True)
        if result.errors:
            raise SystemExit(f"unreadable images: {list(result.errors.values())[:3]}")
        arrays[prefix + "features"], arrays[prefix + "labels"] = result.features, labels[rows]
    np.savez(out, class_names=np.asarray(MNIST_CLASSES), **arrays)
    return out


def main(train_per_class: int = 2000, test_per_class: int = 300, px: int = 128) -> None:
    print(mnist_features(train_per_class, test_per_class, px))


if __name__ == "__main__":
    typer.run(main)
