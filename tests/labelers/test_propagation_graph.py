"""knn_graph's choice of exact or approximate neighbours by pool size (labelers/propagation.py)."""
import numpy as np
import pytest
import scipy.sparse as sp

from labelers import propagation
from labelers.propagation import knn_graph, pool_neighbours


def _clusters(n=1500, dim=32, clusters=15, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return (centres[rng.integers(clusters, size=n)] + rng.normal(0, 0.6, (n, dim))).astype(np.float32)


def _neighbour_sets(graph):
    m = graph.matrix.tocsr()
    return [set(m.indices[m.indptr[i]:m.indptr[i + 1]]) for i in range(m.shape[0])]


def _assert_normalised_like_exact(graph, x, power):
    """S must be D^-1/2 W D^-1/2 with W_ij = max(cos, 0) ** power on S's own edges, symmetric, no self-loops."""
    s = graph.matrix.tocoo()
    v = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = np.einsum("ij,ij->i", v[s.row], v[s.col])
    w = sp.csr_matrix((np.clip(cos, 0, None) ** power, (s.row, s.col)), shape=s.shape)
    d = np.asarray(w.sum(axis=1)).ravel()
    expected = (sp.diags(1 / np.sqrt(d)) @ w @ sp.diags(1 / np.sqrt(d))).toarray()
    np.testing.assert_allclose(graph.matrix.toarray(), expected, rtol=1e-4, atol=1e-7)
    assert abs(graph.matrix - graph.matrix.T).max() < 1e-6
    assert graph.matrix.diagonal().max() == 0


def test_approximate_graph_above_the_threshold_matches_the_exact_one():
    x = _clusters()
    exact = knn_graph(x, k=10, exact_below=len(x) + 1)
    approx = knn_graph(x, k=10, exact_below=len(x))  # at the threshold: approximate
    assert exact.search == "exact" and approx.search != "exact"
    # Recall of the exact graph's edges (each row's k neighbours and the rows listing it) in the approximate one.
    found = sum(len(a & e) for a, e in zip(_neighbour_sets(approx), _neighbour_sets(exact)))
    assert found / exact.matrix.nnz >= 0.98
    _assert_normalised_like_exact(approx, x, power=3.0)
    # Every row keeps at least its k neighbours.
    assert np.diff(approx.matrix.indptr).min() >= 10


def test_below_the_threshold_the_graph_is_exact(monkeypatch):
    x = _clusters(n=300)
    by_hand = knn_graph(x, k=5, exact_below=len(x) + 1)
    monkeypatch.setattr(propagation, "GRAPH_EXACT_BELOW", len(x) + 1)
    default = knn_graph(x, k=5)  # the default threshold is read at call time
    assert default.search == "exact"
    assert (default.matrix != by_hand.matrix).nnz == 0
    monkeypatch.setattr(propagation, "GRAPH_EXACT_BELOW", len(x))
    assert knn_graph(x, k=5).search != "exact"


def test_approximate_graph_is_deterministic():
    x = _clusters(n=800)
    a, b = (knn_graph(x, k=8, exact_below=1) for _ in range(2))
    assert a.search == b.search != "exact"
    assert (a.matrix != b.matrix).nnz == 0


def test_pool_neighbours_lists_each_row_first():
    x = _clusters(n=600)
    v = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims, idx, search = pool_neighbours(v, 6, exact_below=1)
    assert search != "exact" and idx.shape == sims.shape == (600, 7)
    assert (idx[:, 0] == np.arange(600)).mean() >= 0.99


@pytest.mark.parametrize(("k", "error"), [(0, ValueError), (-1, ValueError), (300, ValueError),
                                          (2.5, TypeError), (True, TypeError), ("20", TypeError)])
def test_bad_k_is_refused_with_its_value(k, error):
    with pytest.raises(error, match="got k="):
        knn_graph(_clusters(n=300), k=k)
    with pytest.raises(error, match="got k="):
        knn_graph(_clusters(n=300), k=k, exact_below=1)
