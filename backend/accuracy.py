"""How good a project's head is: its accuracy on the project's own annotations, estimated by k-fold.

Run after every retrain on the embeddings the retrain already has in memory, so it costs a few extra head
fits (at most MAX_FOLDS), never an image download. The figure is the share of annotated tasks the head
predicts right when that task was left out of its training fold, with a 95 % Wilson interval and the count
it rests on.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable

import numpy as np

MAX_FOLDS = 5       # bounds the cost: at most this many extra fits per retrain
MIN_ANNOTATIONS = 4  # below this every fold is a single task: no estimate rather than a meaningless one
Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Return the Wilson score interval (low, high) for `correct` successes out of `n`; raises on n <= 0."""
    if n <= 0:
        raise ValueError("the Wilson interval needs at least one trial")
    p = correct / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def folds_for(n: int, largest_class: int | None = None) -> int:
    """Return how many folds `n` annotations get: MAX_FOLDS, fewer so each test fold keeps >= 2 tasks and,
    for stratified folds, no more folds than the largest class has members."""
    k = min(MAX_FOLDS, n // 2)
    if largest_class is not None:
        k = min(k, largest_class)
    return max(2, k)


def estimate_accuracy(features: np.ndarray, y: np.ndarray, new_head: Callable[[], Any],
                      probabilities: Callable[[Any, np.ndarray], np.ndarray], multiple: bool,
                      seed: int = 0) -> dict[str, Any] | None:
    """Return {"accuracy", "low", "high", "correct", "n", "folds", "method", "seconds"} or None when there are
    fewer than MIN_ANNOTATIONS annotated tasks.

    `new_head()` builds the same untrained head the retrain fits (with its prior); `probabilities(head, x)`
    gives (N, K) probabilities in `y`'s class order. Single choice: stratified k-fold, right when the top class
    is the annotated one. Multiple choice: k-fold, right when the set of classes over 0.5 is exactly the
    annotated set. A class with a single annotation is still held out once: the head then cannot know it,
    as it would not know a new image of a rare class.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(features)
    if n < MIN_ANNOTATIONS:
        return None
    started = time.perf_counter()
    largest = None if multiple else int(np.bincount(y).max())
    stratified = not multiple and largest >= 2  # all singletons cannot be stratified
    k = folds_for(n, largest if stratified else None)
    splitter = StratifiedKFold(k, shuffle=True, random_state=seed) if stratified else \
        KFold(k, shuffle=True, random_state=seed)
    correct = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "least populated class has fewer members than n_splits": intended
        for train, test in splitter.split(features, y if stratified else None):
            head = new_head().fit(features[train], y[train])
            probs = probabilities(head, features[test])
            if multiple:
                correct += int(((probs > 0.5) == (y[test] > 0.5)).all(axis=1).sum())
            else:
                correct += int((probs.argmax(axis=1) == y[test]).sum())
    low, high = wilson_interval(correct, n)
    return {"accuracy": correct / n, "low": low, "high": high, "correct": correct, "n": n, "folds": k,
            "method": f"{'stratified ' if stratified else ''}{k}-fold on the cached embeddings",
            "seconds": round(time.perf_counter() - started, 4)}


def describe(accuracy: dict[str, Any] | None) -> str:
    """Return e.g. "accuracy 83% (95% CI 66-93%, 30 annotations, 5-fold)" or "accuracy not estimated"."""
    if not accuracy:
        return f"accuracy not estimated (fewer than {MIN_ANNOTATIONS} annotations)"
    return (f"accuracy {accuracy['accuracy']:.0%} (95% CI {accuracy['low']:.0%}-{accuracy['high']:.0%}, "
            f"{accuracy['n']} annotations, {accuracy['folds']}-fold)")
