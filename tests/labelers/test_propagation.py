"""Label spreading over a k-NN graph (labelers/propagation.py) and the simulator's "+lp" learner."""
import numpy as np
import pytest

from labelers.datasets import FeatureDataset
from labelers.propagation import knn_graph, predict_new, scores_to_proba, spread
from labelers.simulate import (
    SimulationSettings,
    parse_strategy,
    simulate,
    split_learner_options,
)


def _two_clusters(n=60, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.zeros((2, dim))
    centres[0, 0] = centres[1, 1] = 1.0
    labels = np.repeat([0, 1], n // 2)
    return centres[labels] + rng.normal(0, 0.05, (n, dim)), labels


def test_one_label_per_cluster_labels_the_whole_pool_and_new_points():
    x, y = _two_clusters()
    graph = knn_graph(x, k=5)
    labeled = np.array([0, 59])  # one of each cluster
    scores = spread(graph, labeled, y[labeled], 2)
    assert (scores.argmax(axis=1) == y).all()
    x_new, y_new = _two_clusters(seed=1)
    assert (predict_new(graph, scores, x_new).argmax(axis=1) == y_new).all()


def test_graph_of_three_points_by_hand():
    # cos(a, b) = 0.8, cos(b, c) = 0.6, cos(a, c) = 0; k = 1: a-b and c-b are the only edges.
    x = np.array([[1.0, 0, 0], [0.8, 0.6, 0], [0, 1.0, 0]])
    s = knn_graph(x, k=1, power=1.0).matrix.toarray()
    d = np.array([0.8, 1.4, 0.6])  # degrees
    expected = np.array([[0, 0.8, 0], [0.8, 0, 0.6], [0, 0.6, 0]]) / np.sqrt(np.outer(d, d))
    np.testing.assert_allclose(s, expected, rtol=1e-5, atol=1e-7)


def test_spreading_converges_to_the_closed_form():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 5))
    graph = knn_graph(x, k=4, power=1.0)
    labeled, labels = np.array([0, 1, 2, 3]), np.array([0, 1, 1, 2])
    alpha = 0.5
    f = spread(graph, labeled, labels, 3, alpha=alpha, iterations=200)
    y = np.zeros((30, 3))
    y[labeled, labels] = 1.0 / np.bincount(labels)[labels]  # class-mass balanced seeds
    closed = (1 - alpha) * np.linalg.solve(np.eye(30) - alpha * graph.matrix.toarray(), y)
    np.testing.assert_allclose(f, closed, rtol=1e-4, atol=1e-6)


def test_scores_to_proba_rows_and_unreached_rows():
    p = scores_to_proba(np.array([[2.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), temperature=1.0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], np.exp([1, 0]) / np.exp([1, 0]).sum())
    np.testing.assert_allclose(p[1], [0.5, 0.5])  # no label reached it: uniform, hence maximally uncertain


def test_bad_inputs_are_refused():
    x, _ = _two_clusters(n=10)
    with pytest.raises(ValueError, match="1 <= k < 10"):
        knn_graph(x, k=10)
    graph = knn_graph(x, k=3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        spread(graph, np.array([0]), np.array([2]), 2)
    with pytest.raises(ValueError, match="2 labeled rows but 1 labels"):
        spread(graph, np.array([0, 1]), np.array([0]), 2)


def test_lp_and_typical_modifiers_parse():
    base, options = parse_strategy("margin+kmeans+lp+typical")
    assert base == "margin"
    assert split_learner_options(options) == ("propagation", "typical", {"diversity": "kmeans"})
    assert split_learner_options(parse_strategy("random")[1]) == ("linear", None, {})


def test_simulate_with_the_propagation_learner_is_perfect_on_separated_clusters():
    x, y = _two_clusters(n=80)
    xt, yt = _two_clusters(n=40, seed=5)
    data = FeatureDataset(x.astype(np.float32), y, ["a", "b"], xt.astype(np.float32), yt)
    settings = SimulationSettings(("random+lp", "margin+lp+typical"), initial=2, batch_size=2, rounds=2, seeds=2)
    curves = simulate(data, settings, progress=False)
    typical_start = curves[(curves["strategy"] == "margin+lp+typical") & (curves["round"] == 0)]
    # Typicality picks one point per k-means cluster (one per blob), and spreading labels the rest.
    assert (typical_start["accuracy"] == 1.0).all()
    assert curves[curves["round"] == 2]["accuracy"].min() == 1.0


def test_mix_learner_is_the_mean_of_spreading_and_the_head():
    from labelers.simulate import Learner

    x, y = _two_clusters(n=40)
    xt, yt = _two_clusters(n=20, seed=7)
    data = FeatureDataset(x.astype(np.float32), y, ["a", "b"], xt.astype(np.float32), yt)
    graph = knn_graph(data.features, k=5)
    settings = SimulationSettings()
    labeled, rows = np.array([0, 1, 39]), np.arange(2, 39)
    mix, lp, lin = (Learner(kind, data, settings, 0, graph).fit(labeled) for kind in ("mix", "propagation", "linear"))
    np.testing.assert_allclose(mix.pool_proba(rows), 0.5 * (lp.pool_proba(rows) + lin.pool_proba(rows)), rtol=1e-6)
    assert (mix.test_predictions() == yt).all()
    with pytest.raises(ValueError, match="needs the pool's k-NN graph"):
        Learner("mix", data, settings, 0, None)
    with pytest.raises(ValueError, match="unknown learner 'knn'"):
        Learner("knn", data, settings, 0, graph)


def test_first_seed_adds_seeds_that_match_a_longer_run():
    x, y = _two_clusters(n=60)
    xt, yt = _two_clusters(n=20, seed=9)
    data = FeatureDataset(x.astype(np.float32), y, ["a", "b"], xt.astype(np.float32), yt)
    common = {"strategies": ("random", "margin+mix"), "initial": 2, "batch_size": 2, "rounds": 1}
    full = simulate(data, SimulationSettings(seeds=3, **common), progress=False)
    added = simulate(data, SimulationSettings(seeds=1, first_seed=2, **common), progress=False)
    assert set(added["seed"]) == {2}
    expected = full[full["seed"] == 2].reset_index(drop=True)
    np.testing.assert_allclose(added["accuracy"].to_numpy(), expected["accuracy"].to_numpy())
