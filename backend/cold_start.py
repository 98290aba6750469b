"""The cold-start order: which of a project's tasks to label first, before the head has evidence.

With an image-only embedder and no trained head, every task gets the same probabilities, so an uncertainty
score ties everywhere and Label Studio falls back to ID order (a folder imported sorted by class gives a
first page of one class). Instead, the exported score of such a project is the task's place in a coverage
order over ALL the project's cached embeddings (not the batch Label Studio sends, so the order is the same
in every /predict):

    (on the first PCA_COMPONENTS principal components of the features)
    level 1: TypiClust picks for k = L clusters (L = number of labels): k-means, each cluster's densest point;
    level 2: the picks for k = 2L not already taken, level 3: k = 4L, ... up to MAX_CLUSTERS;
    then every other task, in a seeded hash order of its content key.

So every prefix of the order is spread over the pool: the first L tasks come from L different clusters.
k-means is seeded by the project id. Score = rank / n in [0, 1): lowest first, never tied (two tasks tie
only when they hold the same image), never broken by task id.

The order is recomputed when the project's embedded images change by a quarter or more (new tasks embedded
by the warm-up or a /predict); fewer new images are appended after the ordered ones (seeded hash order).
Between changes it is served from memory.
"""
from __future__ import annotations

import hashlib
import logging
import threading

import numpy as np

log = logging.getLogger(__name__)

MAX_CLUSTERS = 256   # the last level of k-means; beyond it the order is a seeded hash (cheap for big pools)
# k-means runs on this many principal components: on 2000 CIFAR-10 images (EfficientNet-Lite0, 1280-d) it is
# about 10x faster than on the raw features and covers as many classes (benchmarks/bench_cold_start.py).
PCA_COMPONENTS = 50


def project_seed(project: str) -> int:
    """Return the k-means seed of a project: a stable hash of its id (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(f"cold-start:{project}".encode(), digest_size=4).digest(), "big")


def coverage_order(features: np.ndarray, n_labels: int, seed: int, keys: list[str] | None = None) -> np.ndarray:
    """Return all row indices of `features` (N, D), first to label first (see the module docstring).

    `keys`: a stable name per row (content keys) for the hash order of the tail; row index when None.
    Raises ValueError for features that are not a finite 2-D array.
    """
    from labelers.strategies import cold_start

    x = np.asarray(features, np.float32)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"cold-start features must be a finite (N, D) array, got shape {x.shape}")
    n = len(x)
    if x.shape[1] > PCA_COMPONENTS and n > PCA_COMPONENTS:
        from sklearn.decomposition import PCA

        x = PCA(PCA_COMPONENTS, random_state=seed % 2**32).fit_transform(x).astype(np.float32)
    order: list[int] = []
    taken = np.zeros(n, bool)
    k = max(2, int(n_labels))
    while k <= min(n, MAX_CLUSTERS):
        for i in cold_start(x, k, "typical", seed=seed):
            if not taken[i]:
                taken[i] = True
                order.append(int(i))
        k *= 2
    names = keys if keys is not None else [str(i) for i in range(n)]
    rest = sorted((i for i in range(n) if not taken[i]), key=lambda i: _digest(seed, names[i]))
    return np.asarray(order + rest, dtype=np.int64)


def _digest(seed: int, key: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()


def _hash_order(keys, seed: int) -> list[str]:
    """`keys` in the seeded hash order: a stable shuffle that no task id or import order can steer."""
    return sorted(keys, key=lambda k: _digest(seed, k))


def project_embeddings(store, cache, project: str, embedder_id: str,
                       keys: list[str] | None = None) -> tuple[list[str], np.ndarray | None]:
    """Return (content keys, their (N, D) features) for the embedded images of `project` that the cache
    holds for `embedder_id`, keys sorted (so nothing depends on the order tasks were embedded in); features
    is None when there are none. `keys`: the project's content keys when already read."""
    keys = sorted(store.project_content_keys(project) if keys is None else keys)
    vectors = cache.get_many(embedder_id, keys) if keys else {}
    known = [k for k in keys if k in vectors]
    return known, (np.stack([vectors[k] for k in known]) if known else None)


class ColdStartOrder:
    """Per project: {content key: score} over its cached embeddings; thread-safe.

    Recomputed (k-means) when the embedded pool changed by REFRESH_FRACTION or more since the last
    computation; smaller arrivals (the warm-up still running, a few new tasks) are appended after the
    ordered ones in the seeded hash order, so a /predict during a long warm-up does not pay for k-means."""

    REFRESH_FRACTION = 0.25

    def __init__(self, store, cache):
        self.store, self.cache = store, cache
        # project -> ((embedder, labels), computed order, {key: score}, store.tasks_stamp when read)
        self._orders: dict[str, tuple[tuple, list[str], dict[str, float], int]] = {}
        self._lock = threading.Lock()
        self.computed = 0  # how many k-means orders were computed (tests check a repeated /predict reuses it)

    def scores(self, project: str, embedder_id: str, n_labels: int) -> dict[str, float]:
        """Return {content key: cold-start score in [0, 1)} for every embedded image of `project`.

        The project's content keys are read only when its task rows changed since the last call
        (store.tasks_stamp, one counter row): reading all of them took a large share of a warm /predict."""
        tasks = self.store.tasks_stamp(project)  # before the keys: a write in between is seen next time
        stamp = (embedder_id, n_labels)
        with self._lock:
            entry = self._orders.get(project)
            if entry and entry[0] == stamp and entry[3] == tasks:
                return entry[2]
        keys = set(self.store.project_content_keys(project))
        with self._lock:
            entry = self._orders.get(project)
            if entry and entry[0] == stamp:
                _, computed, ranked, _ = entry
                if len(ranked) == len(keys) and keys.issubset(ranked):
                    self._orders[project] = (stamp, computed, ranked, tasks)
                    return ranked
                new = keys.difference(computed)
                if len(new) < self.REFRESH_FRACTION * len(computed):
                    order = [k for k in computed if k in keys] + _hash_order(new, project_seed(project))
                    ranked = {k: rank / len(order) for rank, k in enumerate(order)}
                    self._orders[project] = (stamp, computed, ranked, tasks)
                    return ranked
            computed = self._compute(project, embedder_id, n_labels, sorted(keys))
            ranked = {k: rank / len(computed) for rank, k in enumerate(computed)} if computed else {}
            self._orders[project] = (stamp, computed, ranked, tasks)
            return ranked

    def _compute(self, project: str, embedder_id: str, n_labels: int, keys: list[str]) -> list[str]:
        """Return the project's content keys in coverage order (keys sorted first: the order depends on the
        images, never on task ids or the order they were embedded in)."""
        known, features = project_embeddings(self.store, self.cache, project, embedder_id, keys)
        if not known:
            return []
        order = coverage_order(features, n_labels, project_seed(project), known)
        self.computed += 1
        log.info("project %s: cold-start order over %d embedded tasks (k-means coverage, seed %d)",
                 project, len(known), project_seed(project))
        return [known[i] for i in order]

    def forget(self, project: str) -> None:
        with self._lock:
            self._orders.pop(project, None)
