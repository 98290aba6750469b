"""Uncertainty strategies, the score we export to Label Studio, and batch selection.

p is a row of class probabilities, p1 >= p2 its two largest entries, K the number of classes.

| strategy | uncertainty u            | exported score (confidence) |
|----------|--------------------------|-----------------------------|
| least    | 1 - p1                   | p1                          |
| margin   | 1 - (p1 - p2)            | p1 - p2                     |
| entropy  | H(p) = -sum p log p      | 1 - H(p) / log K            |
| random   | 1 - r, r ~ U(0, 1)       | r (seeded per task key)     |

The score is in [0, 1] and strictly decreasing in u, so sorting tasks by prediction score ascending in
Label Studio puts the most informative task first.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

STRATEGIES = ("margin", "entropy", "least", "random")


def _check(probs: np.ndarray, strategy: str) -> np.ndarray:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must be (N, K>=2), got shape {probs.shape}")
    return probs


def _seeded_uniform(n: int, keys: Sequence | None, seed: int) -> np.ndarray:
    """U(0,1) per item: a hash of (seed, key) when keys are given, so a task keeps its draw across calls."""
    if keys is None:
        return np.random.default_rng(seed).random(n)
    draws = [int.from_bytes(hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest(), "big") for k in keys]
    return np.asarray(draws, dtype=np.float64) / 2.0 ** 64


def top_two(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the largest and second-largest probability of each row, in O(N K)."""
    part = np.partition(probs, -2, axis=1)
    return part[:, -1], part[:, -2]


def prediction_score(probs: np.ndarray, strategy: str, keys: Sequence | None = None, seed: int = 0) -> np.ndarray:
    """Return the confidence score (N,) in [0, 1] that Label Studio sorts on (low = label me first)."""
    probs = _check(probs, strategy)
    if strategy == "random":
        return _seeded_uniform(len(probs), keys, seed)
    if strategy == "entropy":
        entropy = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
        return np.clip(1.0 - entropy / np.log(probs.shape[1]), 0.0, 1.0)
    p1, p2 = top_two(probs)
    return p1 if strategy == "least" else p1 - p2


def uncertainty(probs: np.ndarray, strategy: str, keys: Sequence | None = None, seed: int = 0) -> np.ndarray:
    """Return the uncertainty u (N,) of each row: higher means more informative to label."""
    probs = _check(probs, strategy)
    if strategy == "entropy":
        return -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
    return 1.0 - prediction_score(probs, strategy, keys, seed)


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first."""
    k = min(k, len(values))
    idx = np.argpartition(-values, k - 1)[:k] if k < len(values) else np.arange(len(values))
    return idx[np.argsort(-values[idx], kind="stable")]


def select_batch(probs: np.ndarray, k: int, strategy: str, features: np.ndarray | None = None,
                 diversity: str | None = None, class_balance: bool = False, candidates_per_pick: int = 10,
                 seed: int = 0) -> np.ndarray:
    """Return the indices of k pool rows to label next (without replacement), most informative first.

    diversity="kmeans" clusters the top `candidates_per_pick * k` candidates into k groups (on `features`)
    and takes the most uncertain of each, so one batch does not spend its labels on near-duplicates.
    class_balance=True spreads picks round-robin over predicted classes, countering the drift of
    uncertainty sampling towards a few confusable classes.
    """
    u = uncertainty(probs, strategy, seed=seed) + 1e-9 * np.random.default_rng(seed).random(len(probs))
    k = min(k, len(u))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if diversity == "kmeans":
        if features is None:
            raise ValueError("diversity='kmeans' needs features")
        from sklearn.cluster import KMeans

        candidates = _top_k(u, candidates_per_pick * k)
        if len(candidates) <= k:
            return candidates
        clusters = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(features[candidates])
        picks = [candidates[clusters == c][np.argmax(u[candidates[clusters == c]])] for c in range(k)]
        return np.asarray(sorted(picks, key=lambda i: -u[i]), dtype=np.int64)
    if diversity not in (None, "none"):
        raise ValueError(f"unknown diversity {diversity!r}; use None or 'kmeans'")
    if class_balance:
        predicted = np.asarray(probs).argmax(axis=1)
        queues = [list(_top_k(np.where(predicted == c, u, -np.inf), int((predicted == c).sum())))
                  for c in np.unique(predicted)]
        picks: list[int] = []
        while len(picks) < k:
            for queue in queues:
                if queue and len(picks) < k:
                    picks.append(int(queue.pop(0)))
        return np.asarray(picks, dtype=np.int64)
    return _top_k(u, k)


def cold_start(features: np.ndarray, k: int, method: str = "typical", seed: int = 0) -> np.ndarray:
    """Return k indices to label first, before any model exists.

    "typical" (TypiClust-style): k-means into k clusters, then each cluster's densest point (highest
    inverse mean distance to its nearest neighbours). "random": uniform without replacement.
    """
    n = len(features)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    if method == "random":
        return rng.choice(n, size=k, replace=False)
    if method != "typical":
        raise ValueError(f"unknown cold-start method {method!r}; use 'typical' or 'random'")
    from sklearn.cluster import KMeans
    from sklearn.neighbors import NearestNeighbors

    clusters = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(features)
    picks = []
    for c in range(k):
        members = np.flatnonzero(clusters == c)
        if len(members) == 1:
            picks.append(members[0])
            continue
        neighbours = min(20, len(members) - 1)
        distances, _ = NearestNeighbors(n_neighbors=neighbours + 1).fit(features[members]).kneighbors(features[members])
        typicality = 1.0 / (distances[:, 1:].mean(axis=1) + 1e-12)
        picks.append(members[np.argmax(typicality)])
    return np.asarray(picks, dtype=np.int64)
