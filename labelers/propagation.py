"""A semi-supervised learner for active learning: label spreading over a k-NN graph of the pool's embeddings.

A linear head sees only the labeled rows. Label spreading (Zhou et al. 2004) also uses the unlabeled pool:
every row gets the labels of the rows it is connected to through the graph, so one label per class already
reaches whole clusters. The graph depends on the pool's embeddings only, so it is built once and reused by
every round, strategy and seed.

    graph = knn_graph(pool_features, k=20)                      # symmetric, D^-1/2 W D^-1/2 normalised
    scores = spread(graph, labeled_rows, labels, n_classes)     # (N, K) class scores of every pool row
    probs = scores_to_proba(scores)                             # rows sum to 1: what strategies rank on
    test_pred = predict_new(graph, scores, test_features)       # inductive: weighted vote of k pool neighbours

The neighbours are exact below GRAPH_EXACT_BELOW pool rows and found by a faiss HNSW index at or above it
(`pool_neighbours`): an exact graph is an N x N x D GEMM, hours at 1M rows; benchmarks/bench_knn_graph.py
measures both and what spreading sees of the difference.

Affinities are cosine similarities raised to the power `power` (Iscen et al. 2019 use 3 on CNN features),
clipped at 0. Spreading solves F = (1 - alpha) (I - alpha S)^-1 Y by the fixed-point iteration
F <- alpha S F + (1 - alpha) Y, which converges because the spectral radius of alpha S is below 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

# Chosen on a CIFAR-10 development pool (10 000 EfficientNet-Lite0 test-split images, never the benchmark's
# test set) and applied unchanged to every dataset; see benchmarks/RESULTS.md, "semi-supervised learner".
DEFAULT_K = 20
DEFAULT_ALPHA = 0.9
DEFAULT_POWER = 3.0
DEFAULT_ITERATIONS = 40
# The graph's neighbours are exact below this many pool rows (an N x N x D GEMM, N^2: 7 s at 10k x 1280, 66 s
# at 50k) and come from a faiss HNSW index at or above it (about N log N: 7 s at 10k, 29 s at 50k, 2.3x).
# Measured by benchmarks/bench_knn_graph.py on CIFAR-10 EfficientNet-Lite0 features, one thread each, shared
# machine (seconds moved up to 2x with its load, the ratio 2.3-2.5x): the two cross near 12k; exact gets every
# core and HNSW insertion one, hence 30k. At 50k the HNSW graph changed
# spreading's test accuracy by -0.002..+0.002 (paired, 1-20 labels per class), within seed noise. faiss IVF
# (labelers.similarity, nprobe 16) was no faster than exact at 50k x 1280 (126 s vs 132 s) for recall 0.93:
# its list scans are not a GEMM.
GRAPH_EXACT_BELOW = 30_000
# HNSW links per row and candidates kept while inserting and searching. M=16: recall@20 0.985 at 10k, 0.963
# at 50k; M=32 buys 0.992 at 50k for 1.8x the time, with no accuracy difference spreading shows.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 64


@dataclass
class KnnGraph:
    """The normalised affinity matrix S (N x N, sparse, symmetric) of a pool and what predicting needs."""

    matrix: sp.csr_matrix
    vectors: np.ndarray  # the pool's unit-length features, for `predict_new`
    k: int
    power: float
    test_neighbours: tuple | None = None  # `new_neighbours` of a fixed test set, kept by the simulator
    search: str = "exact"  # how the neighbours were found (`pool_neighbours`): "exact" or "hnsw M=.. ef=.."


def knn_graph(features: np.ndarray, k: int = DEFAULT_K, power: float = DEFAULT_POWER,
              exact_below: int | None = None) -> KnnGraph:
    """Return the symmetric k-NN graph of `features` (cosine), normalised as D^-1/2 W D^-1/2.

    W_ij = max(cos(x_i, x_j), 0) ** power for j among the k nearest rows of i (or i among j's), W_ii = 0.
    Below `exact_below` rows (default GRAPH_EXACT_BELOW) the neighbours are exact; at or above, they come
    from a faiss HNSW index (`pool_neighbours`; deterministic: the same pool gives the same graph). Raises
    ValueError when k is not in [1, N-1] (a graph needs at least two rows), TypeError when it is not an integer.
    """
    from .similarity import normalize

    vectors = normalize(features)
    n = len(vectors)
    check_k(k, n)
    sims, idx, search = pool_neighbours(vectors, k, exact_below)
    return KnnGraph(graph_matrix(sims, idx, power), vectors, int(k), power, search=search)


def check_k(k, n: int) -> None:
    """Raise TypeError unless k is an integer, ValueError unless 1 <= k < n."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k of a k-NN graph must be an integer, got k={k!r}")
    if not 1 <= k < n:
        raise ValueError(f"a k-NN graph over {n} rows needs 1 <= k < {n}, got k={k}")


def pool_neighbours(vectors: np.ndarray, k: int, exact_below: int | None = None,
                    ) -> tuple[np.ndarray, np.ndarray, str]:
    """Return (similarities, indices, search) of the k + 1 nearest rows of every row of the unit-length
    `vectors` (N, D), itself usually first; indices are -1 where the HNSW search found fewer rows.

    Exact (one chunked GEMM and a partial sort) below `exact_below` rows (default GRAPH_EXACT_BELOW),
    a faiss HNSW index at or above it; `search` says which ("exact" or "hnsw M=.. ef=..")."""
    from .similarity import SimilarityIndex

    if exact_below is None:  # read here, not bound at import, so a deployment or test can change it
        exact_below = GRAPH_EXACT_BELOW
    if len(vectors) < exact_below:
        index = SimilarityIndex(vectors, exact_below=len(vectors) + 1)
        sims, idx = index.search(vectors, k + 1)
        return sims, idx, "exact"
    return hnsw_neighbours(vectors, k)


def hnsw_neighbours(vectors: np.ndarray, k: int, m: int = HNSW_M,
                    ef_search: int = HNSW_EF_SEARCH) -> tuple[np.ndarray, np.ndarray, str]:
    """`pool_neighbours` from a faiss HNSW-Flat index (inner product on unit rows = cosine).

    The same vectors give the same graph: faiss draws the HNSW levels from a fixed seed, and the rows are
    inserted on one thread (parallel insertion makes the links depend on thread timing); the search, one
    independent walk per row, uses every thread. Memory: the index holds a copy of the vectors."""
    import faiss

    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # OpenMP's thread count is per calling thread: other threads keep theirs
    try:
        index.add(vectors)
    finally:
        faiss.omp_set_num_threads(threads)
    index.hnsw.efSearch = max(ef_search, k + 1)
    sims, idx = index.search(vectors, k + 1)
    return sims, idx.astype(np.int64), f"hnsw M={m} ef={index.hnsw.efSearch}"


def graph_matrix(sims: np.ndarray, idx: np.ndarray, power: float) -> sp.csr_matrix:
    """Return the normalised affinity matrix D^-1/2 W D^-1/2 (float32 CSR) from each row's neighbours
    (`pool_neighbours`): self-loops and missing neighbours (-1) dropped, W made symmetric."""
    n, width = idx.shape
    rows = np.repeat(np.arange(n), width)
    weights = np.clip(sims.ravel(), 0.0, None) ** power
    cols = idx.ravel()
    keep = (cols >= 0) & (cols != rows)  # drop self-loops (a duplicate may come first, so test the index)
    w = sp.csr_matrix((weights[keep], (rows[keep], cols[keep])), shape=(n, n))
    w = w.maximum(w.T)  # symmetric: an edge if either end lists the other
    degree = np.asarray(w.sum(axis=1)).ravel()
    inv_sqrt = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    s = sp.diags(inv_sqrt) @ w @ sp.diags(inv_sqrt)
    return s.tocsr().astype(np.float32)


def spread(graph: KnnGraph, labeled: np.ndarray, labels: np.ndarray, n_classes: int,
           alpha: float = DEFAULT_ALPHA, iterations: int = DEFAULT_ITERATIONS) -> np.ndarray:
    """Return the (N, K) class scores of every pool row after spreading the given labels over the graph.

    `labeled` are pool row indices, `labels` their classes. Each class's seed column is divided by its
    count, so a class with many labels does not flood the graph (class-mass balance). Rows the labels do
    not reach get all-zero scores. Raises ValueError on a label outside [0, K) or mismatched lengths.
    """
    labeled, labels = np.asarray(labeled, np.int64), np.asarray(labels, np.int64)
    if len(labeled) != len(labels):
        raise ValueError(f"{len(labeled)} labeled rows but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got {labels.min()}..{labels.max()}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n = graph.matrix.shape[0]
    y = np.zeros((n, n_classes), np.float32)
    counts = np.bincount(labels, minlength=n_classes).astype(np.float32)
    y[labeled, labels] = 1.0 / counts[labels]
    f = y.copy()
    for _ in range(iterations):
        f = alpha * (graph.matrix @ f) + (1 - alpha) * y
    return f


def scores_to_proba(scores: np.ndarray, temperature: float = 0.1) -> np.ndarray:
    """Return class probabilities (N, K) from spread scores: each row scaled to sum 1, then sharpened as a
    softmax of the scaled row over `temperature`. Rows with no score become uniform."""
    scores = np.asarray(scores, np.float64)
    total = scores.sum(axis=1, keepdims=True)
    share = np.divide(scores, total, out=np.full_like(scores, 1.0 / scores.shape[1]), where=total > 0)
    logits = share / temperature
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def new_neighbours(graph: KnnGraph, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, weights), each (M, k): the k nearest pool rows of each new row and their edge
    weights (cosine clipped at 0, to the graph's power). Compute once for a fixed set (e.g. a test set)."""
    from .similarity import normalize

    q = normalize(features, "features")
    if q.shape[1] != graph.vectors.shape[1]:
        raise ValueError(f"features have {q.shape[1]} dimensions, the graph's pool {graph.vectors.shape[1]}")
    idx = np.empty((len(q), graph.k), np.int64)
    weights = np.empty((len(q), graph.k), np.float32)
    step = 2048
    for start in range(0, len(q), step):
        sims = q[start:start + step] @ graph.vectors.T
        top = np.argpartition(-sims, graph.k - 1, axis=1)[:, :graph.k]
        idx[start:start + step] = top
        weights[start:start + step] = np.clip(np.take_along_axis(sims, top, axis=1), 0.0, None) ** graph.power
    return idx, weights


def predict_from_neighbours(scores: np.ndarray, neighbours: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Return (M, K) class probabilities of new rows from `new_neighbours` output and the pool's scores."""
    idx, weights = neighbours
    total = scores.sum(axis=1, keepdims=True)
    share = np.divide(scores, total, out=np.zeros_like(scores, dtype=np.float64), where=total > 0)
    return scores_to_proba(np.einsum("mk,mkc->mc", weights, share[idx]))


def predict_new(graph: KnnGraph, scores: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Return (M, K) class probabilities of new rows (e.g. a test set) from their k nearest pool rows'
    spread scores, weighted like the graph's edges. The pool is not changed."""
    return predict_from_neighbours(scores, new_neighbours(graph, features))
