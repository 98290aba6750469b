"""Uncertainty strategies, the score we export to Label Studio, and batch selection.

p is a row of class probabilities, p1 >= p2 its two largest entries, K the number of classes.

| strategy | uncertainty u            | exported score (confidence) |
|----------|--------------------------|-----------------------------|
| least    | 1 - p1                   | p1                          |
| margin   | 1 - (p1 - p2)            | p1 - p2                     |
| entropy  | H(p) = -sum p log p      | 1 - H(p) / log K            |
| random   | 1 - r, r ~ U(0, 1)       | r (seeded per task key)     |
| gaussian | r ** (1 / w), w = exp(-(p1 - p2)^2 / (2 * 0.4^2)) | 1 - u                |

The score is in [0, 1] and strictly decreasing in u, so sorting tasks by prediction score ascending in
Label Studio puts the most informative task first.

"gaussian" is Active-Labeler's idea (sample binary items with weights N(0.5, 0.2) on the positive
probability) made clean: a weighted draw without replacement (Efraimidis-Spirakis keys r ** (1/w)), with the
weight a Gaussian of the margin. With two classes p1 - p2 = 2 |p - 0.5|, so this is exactly a Gaussian of
width 0.2 around p = 0.5; with K classes it favours close calls but, unlike margin, still draws some
confident items, so a batch is not all one boundary.

Two-choice projects ("Accept"/"Reject", a positive class against the rest) are K = 2 and go through every
strategy unchanged.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

STRATEGIES = ("margin", "entropy", "least", "random", "gaussian")
# Width of the gaussian strategy's weight on the margin p1 - p2 (0.2 on p for two classes, as Active-Labeler).
GAUSSIAN_WIDTH = 0.4


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
    if strategy == "gaussian":
        return 1.0 - gaussian_key(p1 - p2, _seeded_uniform(len(probs), keys, seed))
    return p1 if strategy == "least" else p1 - p2


def gaussian_key(margin: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Return the gaussian strategy's sampling key r ** (1 / w) in [0, 1] (higher = drawn first).

    Taking the top-k keys is a draw of k items without replacement with probability proportional to
    w = exp(-margin^2 / (2 GAUSSIAN_WIDTH^2)) at each step (Efraimidis and Spirakis 2006).
    """
    weight = np.exp(-np.square(np.asarray(margin, np.float64)) / (2 * GAUSSIAN_WIDTH ** 2))
    return np.exp(np.log(np.clip(r, 1e-300, 1.0)) / weight)


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
                 seed: int = 0, n_closest: int = 0) -> np.ndarray:
    """Return the indices of k pool rows to label next (without replacement), most informative first.

    diversity="kmeans" clusters the top `candidates_per_pick * k` candidates into k groups (on `features`)
    and takes the most uncertain of each, so one batch does not spend its labels on near-duplicates.
    class_balance=True spreads picks round-robin over predicted classes, countering the drift of
    uncertainty sampling towards a few confusable classes.
    n_closest > 0 (Active-Labeler's sampling_nn): the strategy picks ceil(k / (1 + n_closest)) rows and each
    brings its n_closest nearest neighbours in `features`; the batch is cut to k.
    """
    if n_closest > 0:
        if features is None:
            raise ValueError("n_closest needs features")
        picks = select_batch(probs, -(-k // (1 + n_closest)), strategy, features, diversity, class_balance,
                             candidates_per_pick, seed)
        return with_neighbours(features, picks, n_closest)[:k]
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


def with_neighbours(features: np.ndarray, picks: np.ndarray, n_closest: int,
                    excluded: np.ndarray | None = None) -> np.ndarray:
    """Return `picks`, each followed by its n_closest nearest rows of `features` (cosine), no row twice.

    A neighbour already picked, already brought by an earlier pick, or in `excluded` (e.g. labeled rows) is
    skipped and the search goes deeper, so each pick brings exactly n_closest new rows while the pool has
    them. Picks keep their order.
    """
    from .similarity import SimilarityIndex

    picks = np.asarray(picks, dtype=np.int64)
    taken = set(picks.tolist()) | set(np.asarray(excluded if excluded is not None else [], np.int64).tolist())
    available = len(features) - len(taken)
    index = SimilarityIndex(features)
    out: list[int] = []
    for pick in picks:
        out.append(int(pick))
        want = min(n_closest, available)
        found: list[int] = []
        depth = 2 * n_closest + 1
        while len(found) < want:
            _, idx = index.search(features[pick][None], min(depth, len(features)))
            found = [j for j in idx[0].tolist() if j >= 0 and j not in taken][:want]
            if depth >= len(features):
                break
            depth *= 2
        taken.update(found)
        available -= len(found)
        out += found
    return np.asarray(out, dtype=np.int64)


def seed_from_reference(features: np.ndarray, reference: np.ndarray, k: int, n_neighbours: int | None = None,
                        seed: int = 0) -> np.ndarray:
    """Return k indices to label first: the n_neighbours rows nearest to `reference` (a (D,) embedding),
    most similar first, then k - n_neighbours drawn at random from the rest (n_neighbours defaults to k).

    Active-Labeler's reference-image seeding: start a rare positive class from one example instead of
    hoping a random draw contains it. Raises ValueError when n_neighbours is outside [0, k].
    """
    from .similarity import nearest

    k = min(k, len(features))
    n_neighbours = k if n_neighbours is None else n_neighbours
    if not 0 <= n_neighbours <= k:
        raise ValueError(f"seed neighbours must be between 0 and the initial count {k}, got {n_neighbours}")
    _, near = nearest(features, reference, n_neighbours)
    rest = np.setdiff1d(np.arange(len(features)), near)
    extra = np.random.default_rng(seed).choice(rest, size=k - len(near), replace=False)
    return np.concatenate([near, extra]).astype(np.int64)
