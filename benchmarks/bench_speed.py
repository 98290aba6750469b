"""Speed of the active-learning foundation, as ratios measured side by side in one run.

    python -m benchmarks.bench_speed [--images 200] [--pool 1000000]

1. Embedding: batched DataLoader encoding vs one image at a time (same model, same images).
2. Pool scoring: 1M x 512 embeddings, 100 classes, margin score: `score_pool` vs a straightforward NumPy
   baseline (float64 softmax over the full matrix, full row sort for the top two).
3. Head training on 10k labeled embeddings: our L-BFGS head vs scikit-learn LogisticRegression.
"""
from __future__ import annotations

import time

import numpy as np
import typer

from labelers.cache import embed_files
from labelers.embedders import make_embedder
from labelers.head import ClassifierHead
from labelers.images import load_image
from labelers.pool_scoring import score_pool
from labelers.sample_data import cifar10_subset


def timed(fn, repeats: int = 1) -> float:
    """Best-of-`repeats` wall time of fn() in seconds (best-of damps a noisy shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_embedding(n_images: int, spec: str) -> dict:
    embedder = make_embedder(spec, device="cpu")
    paths, _ = cifar10_subset("test", max(1, n_images // 10))
    one_by_one = timed(lambda: [embedder.encode_images([load_image(p)]) for p in paths])
    batched = timed(lambda: embed_files(embedder, None, paths, batch_size=64, num_workers=0))
    return {"images": len(paths), "embedder": embedder.id, "one_by_one_s": one_by_one, "batched_s": batched,
            "speedup": one_by_one / batched}


def numpy_margin_baseline(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    logits = features.astype(np.float64) @ weight.T.astype(np.float64) + bias
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    ordered = np.sort(probs, axis=1)
    return ordered[:, -1] - ordered[:, -2]


def bench_scoring(pool: int, dim: int = 512, classes: int = 100) -> dict:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((pool, dim), dtype=np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    head = ClassifierHead([f"c{i}" for i in range(classes)]).init_from_text(rng.normal(size=(classes, dim)), 10.0)
    ours = {}
    ours_s = timed(lambda: ours.setdefault("r", score_pool(head, features, "margin")), repeats=2)
    base = {}
    base_s = timed(lambda: base.setdefault("r", numpy_margin_baseline(features, head.weight.numpy(),
                                                                      head.bias.numpy())), repeats=2)
    max_diff = float(np.abs(ours["r"].score - base["r"]).max())
    return {"pool": pool, "dim": dim, "classes": classes, "ours_s": ours_s, "numpy_s": base_s,
            "speedup": base_s / ours_s, "max_abs_diff": max_diff}


def bench_head(n: int = 10_000, dim: int = 1280, classes: int = 10) -> dict:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, n)
    features = (centers[labels] + 3 * rng.normal(size=(n, dim))).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    names = [f"c{i}" for i in range(classes)]
    ours = timed(lambda: ClassifierHead(names, calibrate=False).fit(features, labels))
    calibrated = timed(lambda: ClassifierHead(names, calibrate=True).fit(features, labels))
    sk = timed(lambda: LogisticRegression(C=1000.0, max_iter=200).fit(features, labels))
    return {"labeled": n, "dim": dim, "ours_s": ours, "ours_calibrated_s": calibrated, "sklearn_s": sk,
            "sklearn_over_ours": sk / ours}


def section(embedding: dict, scoring: dict, head: dict, command: str) -> str:
    """Markdown for RESULTS.md."""
    return "\n".join([
        "## Speed of the active-learning foundation (`benchmarks/bench_speed.py`)", "",
        f"Command: `{command}`. Each pair measured side by side in one run (best of repeats); ratios matter, "
        "absolute seconds depend on how busy the 2-core machine was.", "",
        "| what | ours | baseline | ratio |", "|---|---|---|---|",
        f"| embed {embedding['images']} CIFAR-10 images with {embedding['embedder']}: batched DataLoader (64) vs "
        f"one image at a time | {embedding['batched_s']:.2f} s | {embedding['one_by_one_s']:.2f} s | "
        f"**{embedding['speedup']:.1f}x** |",
        f"| margin scores for a {scoring['pool']:,} x {scoring['dim']} pool, {scoring['classes']} classes: "
        f"`score_pool` vs NumPy float64 softmax + full sort (max abs diff {scoring['max_abs_diff']:.1e}) | "
        f"{scoring['ours_s']:.2f} s | {scoring['numpy_s']:.2f} s | **{scoring['speedup']:.1f}x** |",
        f"| train the head on {head['labeled']:,} labeled {head['dim']}-d embeddings (10 classes) vs scikit-learn "
        f"LogisticRegression (lbfgs, 200 iterations) | {head['ours_s']:.2f} s "
        f"({head['ours_calibrated_s']:.2f} s with 3-fold temperature calibration) | {head['sklearn_s']:.2f} s | "
        f"**{head['sklearn_over_ours']:.1f}x** |",
    ])


def main(images: int = 200, pool: int = 1_000_000, embedder: str = "efficientnet-lite0@128",
         write: bool = False) -> None:
    import shlex
    import sys

    from .results_file import write_section

    embedding, scoring, head = bench_embedding(images, embedder), bench_scoring(pool), bench_head()
    text = section(embedding, scoring, head, "python -m benchmarks.bench_speed " + shlex.join(sys.argv[1:]))
    print(text)
    if write:
        write_section("bench_speed", text)


if __name__ == "__main__":
    typer.run(main)
