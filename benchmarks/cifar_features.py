"""Embed a CIFAR-10 subset with EfficientNet-Lite0 through the shared cache and save an .npz.

    python -m benchmarks.cifar_features --train-per-class 1000 --test-per-class 300 --px 128

Output: benchmarks/.work/cifar10_effnet<px>_<train>x<test>.npz with features, labels, test_features,
test_labels, class_names (the `labelloop simulate` .npz layout). Re-runs are served from the cache.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from labelers.cache import EmbeddingCache, embed_files
from labelers.embedders import make_embedder
from labelers.sample_data import CIFAR10_CLASSES, cifar10_subset

WORK = Path(__file__).resolve().parent / ".work"


def cifar_features(train_per_class: int = 1000, test_per_class: int = 300, px: int = 128) -> Path:
    """Return the path of the feature .npz, computing (and caching) embeddings as needed."""
    out = WORK / f"cifar10_effnet{px}_{train_per_class}x{test_per_class}.npz"
    if out.exists():
        return out
    embedder = make_embedder(f"efficientnet-lite0@{px}")
    cache = EmbeddingCache(WORK / "embeddings.sqlite")
    arrays = {}
    for split, per_class, prefix in (("train", train_per_class, ""), ("test", test_per_class, "test_")):
        paths, labels = cifar10_subset(split, per_class)
        result = embed_files(embedder, cache, paths, batch_size=50, progress=True)
        if result.errors:
            raise SystemExit(f"unreadable images: {list(result.errors.values())[:3]}")
        arrays[prefix + "features"], arrays[prefix + "labels"] = result.features, labels
    np.savez(out, class_names=np.asarray(CIFAR10_CLASSES), **arrays)
    return out


def main(train_per_class: int = 1000, test_per_class: int = 300, px: int = 128) -> None:
    print(cifar_features(train_per_class, test_per_class, px))


if __name__ == "__main__":
    typer.run(main)
