"""Benchmark: every complementary-label strategy beside ordinary training (Ord), same model and epochs.

Run: python -m benchmarks.bench_trainers [--quick] [--seeds 3] [--skip-cifar] [--skip-mnist]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

WORK = Path(__file__).resolve().parent / ".work"


def cifar_features(train_per_class: int = 500, test_per_class: int = 200, spec: str = "efficientnet-lite0@128"):
    """Return (train_x, train_y, test_x, test_y) frozen EfficientNet-Lite0 features of a CIFAR-10 subset.

    Features go through the lead's persistent embedding cache (benchmarks/.work/embeddings.sqlite) and are
    also saved as an .npz so later runs skip the model entirely.
    """
    out = WORK / f"cifar10_{spec.replace('@', '_')}_{train_per_class}_{test_per_class}.npz"
    if out.exists():
        data = np.load(out)
        return data["train_x"], data["train_y"], data["test_x"], data["test_y"]
    from labelers.cache import EmbeddingCache, embed_files
    from labelers.embedders import make_embedder
    from labelers.sample_data import cifar10_subset

    embedder = make_embedder(spec, device="cpu")
    cache = EmbeddingCache(WORK / "embeddings.sqlite")
    arrays = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        paths, labels = cifar10_subset(split, per_class)
        result = embed_files(embedder, cache, paths, batch_size=50, progress=True)
        if result.errors:
            raise RuntimeError(f"could not embed {len(result.errors)} CIFAR images, e.g. {next(iter(result.errors.values()))}")
        arrays[f"{split}_x"], arrays[f"{split}_y"] = result.features, labels
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--features-only", action="store_true")
    args = parser.parse_args()
    if args.features_only:
        x, *_ = cifar_features()
        print("features", x.shape)
