"""Coverage picks for the first rounds of active learning, before uncertainty can be trusted.

TypiClust (Hacohen et al. 2022) made a per-round strategy: with L labeled rows and a batch of b, cluster
the pool into L + b groups, and from the largest groups that hold no labeled row take the most typical row
(typicality = inverse mean distance to its nearest neighbours in its group). At a few labels per class this
beats uncertainty, which is computed from a model that has seen almost nothing.
"""
from __future__ import annotations

import numpy as np

# Clusters are capped so the per-round k-means stays cheap on a 50k pool; past this many labels the
# strategies hand over to uncertainty anyway.
MAX_CLUSTERS = 400
TYPICALITY_NEIGHBOURS = 20


def typicality(features: np.ndarray, neighbours: int = TYPICALITY_NEIGHBOURS) -> np.ndarray:
    """Return each row's typicality: 1 / mean Euclidean distance to its `neighbours` nearest other rows
    (all rows equally typical, 1.0, when there is only one)."""
    from sklearn.neighbors import NearestNeighbors

    n = len(features)
    if n == 1:
        return np.ones(1)
    k = min(neighbours, n - 1)
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(features).kneighbors(features)
    return 1.0 / (distances[:, 1:].mean(axis=1) + 1e-12)


def typiclust_batch(features: np.ndarray, labeled: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Return k row indices of `features` (the whole pool) to label next, none of them in `labeled`.

    Clusters min(len(labeled) + k, MAX_CLUSTERS) groups; the largest groups without a labeled row give
    their most typical unlabeled row first; if too few such groups exist, the largest remaining groups give
    their most typical unlabeled row. Raises ValueError when the pool has fewer than k unlabeled rows.
    """
    from sklearn.cluster import MiniBatchKMeans

    n = len(features)
    is_labeled = np.zeros(n, bool)
    is_labeled[np.asarray(labeled, np.int64)] = True
    if (~is_labeled).sum() < k:
        raise ValueError(f"{k} picks asked but only {(~is_labeled).sum()} unlabeled rows remain")
    n_clusters = min(len(labeled) + k, MAX_CLUSTERS, n)
    clusters = MiniBatchKMeans(n_clusters=n_clusters, n_init=1, random_state=seed, batch_size=2048).fit_predict(features)
    sizes = np.bincount(clusters, minlength=n_clusters)
    covered = np.zeros(n_clusters, bool)
    covered[np.unique(clusters[is_labeled])] = True
    # uncovered groups first, then covered ones; larger first within each
    order = sorted(range(n_clusters), key=lambda c: (covered[c], -sizes[c]))
    picks: list[int] = []
    for c in order:
        if len(picks) == k:
            break
        members = np.flatnonzero((clusters == c) & ~is_labeled)
        if len(members):
            picks.append(int(members[np.argmax(typicality(features[members]))]))
    if len(picks) < k:  # fewer non-empty groups than picks: fill with the most typical rows left
        rest = np.setdiff1d(np.flatnonzero(~is_labeled), picks)
        picks += rest[np.argsort(-typicality(features[rest]))][:k - len(picks)].tolist()
    return np.asarray(picks, dtype=np.int64)
