"""Self-training the active-learning head on confident pseudo-labels (labelers/self_training.py, "+self")."""
import numpy as np
import pytest

from labelers.datasets import FeatureDataset
from labelers.propagation import knn_graph
from labelers.self_training import confident_pseudo_labels
from labelers.simulate import Learner, SimulationSettings, parse_strategy, simulate


def test_pseudo_labels_by_hand():
    proba = np.array([[0.9, 0.1],    # 0: class 0, labeled: never returned
                      [0.6, 0.4],    # 1: class 0
                      [0.8, 0.2],    # 2: class 0, surer than 1
                      [0.3, 0.7],    # 3: class 1
                      [0.45, 0.55]])  # 4: class 1, less sure than 3
    rows, classes = confident_pseudo_labels(proba, np.array([0]), per_class=1)
    assert rows.tolist() == [2, 3] and classes.tolist() == [0, 1]
    rows, classes = confident_pseudo_labels(proba, np.array([0]), per_class=5)
    assert rows.tolist() == [2, 1, 3, 4] and classes.tolist() == [0, 0, 1, 1]


def test_pseudo_labels_refuse_bad_input():
    with pytest.raises(ValueError, match="per class must be >= 1"):
        confident_pseudo_labels(np.full((3, 2), 0.5), np.array([0]), per_class=0)
    with pytest.raises(ValueError, match=r"labeled rows must lie in \[0, 3\)"):
        confident_pseudo_labels(np.full((3, 2), 0.5), np.array([3]))


def _clusters(n, seed, dim=8):
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    centres = np.eye(dim)[:2]
    return (centres[labels] + rng.normal(0, 0.3, (n, dim))).astype(np.float32), labels


def test_self_modifier_refits_the_head_on_labels_plus_pseudo_labels():
    assert parse_strategy("margin+mix+self")[1] == {"learner": "mix", "self_train": 100}
    assert parse_strategy("random+mix+self40")[1] == {"learner": "mix", "self_train": 40}
    with pytest.raises(ValueError, match="unknown modifier 'self0'"):
        parse_strategy("random+self0")
    x, y = _clusters(60, 0)
    xt, yt = _clusters(40, 1)
    data = FeatureDataset(x, y, ["a", "b"], xt, yt)
    graph = knn_graph(x, k=5)
    labeled = np.array([0, 59])
    plain = Learner("mix", data, SimulationSettings(), 0, graph).fit(labeled)
    taught = Learner("mix", data, SimulationSettings(), 0, graph, self_train=10).fit(labeled)
    assert plain.head.n_trained == 2 and taught.head.n_trained == 2 + 2 * 10
    # the pseudo-labels are the mix's surest rows, which on separated clusters are right
    rows, pseudo = confident_pseudo_labels(plain.pool_proba(np.arange(60)), labeled, 10)
    assert (pseudo == y[rows]).all()
    with pytest.raises(ValueError, match="propagation learner has none"):
        Learner("propagation", data, SimulationSettings(), 0, graph, self_train=10)


def test_simulate_accepts_a_prebuilt_graph_and_checks_its_size():
    from labelers.datasets import DatasetError

    x, y = _clusters(40, 2)
    xt, yt = _clusters(20, 3)
    data = FeatureDataset(x, y, ["a", "b"], xt, yt)
    settings = SimulationSettings(("random+mix+self5",), initial=2, batch_size=2, rounds=1, seeds=1)
    built_here = simulate(data, settings, progress=False)
    given = simulate(data, settings, progress=False, graph=knn_graph(x))
    np.testing.assert_allclose(given["accuracy"], built_here["accuracy"])
    with pytest.raises(DatasetError, match="graph has 30 rows but the pool 40"):
        simulate(data, settings, progress=False, graph=knn_graph(x[:30]))
