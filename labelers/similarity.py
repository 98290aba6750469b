""""More like this": cosine nearest neighbours over embeddings, exact when small, a faiss IVF index when large.

Below `EXACT_BELOW` rows a query is an exact brute-force scan (one BLAS matmul and a partial sort); above,
`SimilarityIndex` trains an inverted-file index (k-means into about sqrt(N) lists, each query scans the
`nprobe` closest lists). `benchmarks/bench_similarity.py` measures its recall@10 and speed-up against the
exact scan at 1M embeddings.

For the backend: `rank_by_similarity(features, reference)` orders a whole project's tasks by similarity to a
reference embedding (exact; one pass over the features).
"""
from __future__ import annotations

import math

import numpy as np

# Exact search answers one query over 100k x 512 in a few milliseconds: an index only pays above this.
EXACT_BELOW = 100_000
# Lists an IVF query scans by default. Measured (benchmarks/RESULTS.md): recall@10 0.99 at 1M clustered
# 512-d embeddings (1000 lists) and 0.96 on real CIFAR-10 features (100 lists); a share of the lists
# instead (1/16) bought 0.997 at 1M for less than half the speed-up.
DEFAULT_NPROBE = 16
# Exact search scores queries against every row in chunks of at most this many similarities (256 MB).
EXACT_CHUNK = 64 << 20


def default_nprobe(nlist: int) -> int:
    """Lists an IVF query scans by default: DEFAULT_NPROBE, or all of them when there are fewer."""
    return min(nlist, DEFAULT_NPROBE)


class SimilarityError(ValueError):
    """Embeddings or a query that cannot be compared: empty, non-finite, zero, or of another dimension."""


def normalize(features: np.ndarray, what: str = "features") -> np.ndarray:
    """Return float32 C-contiguous rows of unit length (the input itself, not a copy, when it already is
    one: 1M x 512 is 2 GB); raises SimilarityError on NaN/inf or zero rows."""
    x = np.ascontiguousarray(np.atleast_2d(features), dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise SimilarityError(f"{what} must be a non-empty (N, D) array, got shape {np.shape(features)}")
    norms = row_norms(x)
    if not np.isfinite(norms).all():  # a NaN or inf entry makes its row's norm NaN or inf
        raise SimilarityError(f"{what} has non-finite values in rows {np.flatnonzero(~np.isfinite(norms))[:5].tolist()}")
    if (norms == 0).any():
        raise SimilarityError(f"{what} has all-zero rows {np.flatnonzero(norms == 0)[:5].tolist()}: "
                              "a zero embedding has no direction to compare")
    if np.abs(norms - 1.0).max() < 1e-4:
        return x
    return x / norms[:, None].astype(np.float32)


def row_norms(x: np.ndarray) -> np.ndarray:
    """Return the float64 L2 norm of each float32 row, without a full-size temporary.

    float32 squares overflow past 1.8e19: rows whose float32 norm comes out inf are redone in float64, so
    inf or NaN is left only where the row really holds one.
    """
    norms = np.sqrt(np.einsum("ij,ij->i", x, x)).astype(np.float64)
    for i in np.flatnonzero(~np.isfinite(norms)):
        norms[i] = np.linalg.norm(x[i].astype(np.float64))
    return norms


class SimilarityIndex:
    """Cosine k-nearest-neighbour search over (N, D) embeddings.

    exact_below: below this many rows every search is exact; at or above it a faiss IVF-Flat index is built
    (nlist lists, default about sqrt(N); nprobe lists scanned per query, default `default_nprobe`). Exact
    search is a chunked BLAS matmul and a partial sort (faster here than faiss's flat scan). Memory: one normalized float32
    copy of the features, plus the index's own copy when approximate (2 x 2 GB at 1M x 512).
    """

    def __init__(self, features: np.ndarray, exact_below: int = EXACT_BELOW, nlist: int | None = None,
                 nprobe: int | None = None, seed: int = 0):
        self.vectors = normalize(features)
        self.n, self.dim = self.vectors.shape
        self.approximate = self.n >= exact_below
        self.index = None
        if self.approximate:
            self.index = self._build_ivf(nlist or max(1, int(math.sqrt(self.n))), nprobe, seed)

    def _build_ivf(self, nlist: int, nprobe: int, seed: int):
        import faiss

        nlist = min(nlist, self.n)
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # 40 points per list is what faiss's k-means asks for; more only slows training.
        sample = np.random.default_rng(seed).choice(self.n, size=min(self.n, 40 * nlist), replace=False)
        index.cp.seed = seed
        index.train(self.vectors[np.sort(sample)])
        index.add(self.vectors)
        index.nprobe = min(nprobe, nlist) if nprobe else default_nprobe(nlist)
        return index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (similarities, indices), each (Q, k), most similar first, for (Q, D) or (D,) queries.

        k is capped at N. Raises SimilarityError when the query dimension differs from the index's.
        """
        q = normalize(queries, "query")
        if q.shape[1] != self.dim:
            raise SimilarityError(f"query has {q.shape[1]} dimensions, the embeddings have {self.dim}: "
                                  "were they made by the same embedder?")
        k = min(int(k), self.n)
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if self.approximate:
            sims, idx = self.index.search(q, k)
            return sims, idx.astype(np.int64)
        return self._exact(q, k)

    def _exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by cosine: queries in chunks so the score matrix stays under EXACT_CHUNK entries."""
        sims, idx = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
        step = max(1, EXACT_CHUNK // self.n)
        for start in range(0, len(q), step):
            scores = q[start:start + step] @ self.vectors.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < self.n else \
                np.broadcast_to(np.arange(self.n), scores.shape).copy()
            top_scores = np.take_along_axis(scores, top, axis=1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            idx[start:start + step] = np.take_along_axis(top, order, axis=1)
            sims[start:start + step] = np.take_along_axis(top_scores, order, axis=1)
        return sims, idx

    def neighbours(self, rows: np.ndarray, k: int) -> np.ndarray:
        """Return (len(rows), k) indices of each row's k nearest other rows (the row itself left out)."""
        rows = np.asarray(rows, dtype=np.int64)
        _, idx = self.search(self.vectors[rows], min(k + 1, self.n))
        out = [[j for j in found if j != r and j >= 0][:k] for r, found in zip(rows, idx)]
        return np.asarray(out, dtype=np.int64)


def nearest(features: np.ndarray, query: np.ndarray, k: int, exact_below: int = EXACT_BELOW) -> tuple[np.ndarray, np.ndarray]:
    """Return (similarities, indices) of the k rows of `features` most similar to one query vector."""
    sims, idx = SimilarityIndex(features, exact_below=exact_below).search(np.asarray(query)[None], k)
    return sims[0], idx[0]


def rank_by_similarity(features: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order every row by cosine similarity to `reference` (a (D,) embedding, or (R, D) whose mean direction
    is used): returns (order, similarity) with order most similar first and similarity[i] for row i.

    This is the call for ordering a project's tasks by similarity to a reference image or task: exact, one
    pass over the features (1M x 512 in well under a second). Raises SimilarityError on a dimension mismatch.
    """
    vectors = normalize(features)
    ref = normalize(reference, "reference")
    if ref.shape[1] != vectors.shape[1]:
        raise SimilarityError(f"reference has {ref.shape[1]} dimensions, the embeddings have {vectors.shape[1]}")
    direction = normalize(ref.mean(axis=0), "reference mean")[0]
    similarity = vectors @ direction
    return np.argsort(-similarity, kind="stable"), similarity
