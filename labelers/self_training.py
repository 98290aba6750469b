"""Self-training for the active-learning head: refit it on the labels plus the pool's surest pseudo-labels.

With a few labels per class the linear head has seen too little, while label spreading already labels whole
clusters of the pool. Taking, for each class, the unlabeled rows the learner is surest of (a fixed count per
class, so an easy class does not crowd out the others) and refitting the head on them as if they were labels
lets the head learn from the pool too (Lee 2013, "pseudo-label"; here the pseudo-labels come from the
spreading/head mix, whose surest rows are right far more often than its average row).
"""
from __future__ import annotations

import numpy as np

# Chosen on development seeds (random labels, CIFAR-10 10k pool, seeds 100-103; benchmarks/RESULTS.md):
# 100 per class lifted the mix learner by +1.3 / +0.7 / +0.3 / +0.4 pp at 140 / 210 / 420 / 820 labels (300: up to
# +0.7 pp more, at about 3x the
# refit time, which the benchmarks could not afford on a shared 2-core machine).
DEFAULT_PER_CLASS = 100


def confident_pseudo_labels(proba: np.ndarray, labeled: np.ndarray, per_class: int = DEFAULT_PER_CLASS
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Return (rows, classes): for each class, the at most `per_class` unlabeled rows predicted as that class
    with the highest probability, most confident first within a class.

    `proba` is (N, K) over the whole pool, `labeled` the pool rows that already have a label (never returned).
    Raises ValueError when per_class < 1 or a labeled row is outside the pool.
    """
    proba = np.asarray(proba)
    labeled = np.asarray(labeled, np.int64)
    if per_class < 1:
        raise ValueError(f"pseudo-labels per class must be >= 1, got {per_class}")
    if len(labeled) and (labeled.min() < 0 or labeled.max() >= len(proba)):
        raise ValueError(f"labeled rows must lie in [0, {len(proba)}), got {labeled.min()}..{labeled.max()}")
    predicted, confidence = proba.argmax(axis=1), proba.max(axis=1)
    free = np.ones(len(proba), bool)
    free[labeled] = False
    rows, classes = [], []
    for c in range(proba.shape[1]):
        members = np.flatnonzero(free & (predicted == c))
        surest = members[np.argsort(-confidence[members], kind="stable")[:per_class]]
        rows.append(surest)
        classes.append(np.full(len(surest), c, np.int64))
    return np.concatenate(rows), np.concatenate(classes)
