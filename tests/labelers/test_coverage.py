"""TypiClust coverage picks (labelers/coverage.py) and the simulator's +cover<N> switch."""
import numpy as np
import pytest

from labelers.coverage import typicality, typiclust_batch
from labelers.simulate import parse_strategy


def _blobs(seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = np.repeat([0, 1, 2], 30)
    x = centres[labels] + rng.normal(0, 1.0, (90, 2))
    x[[30, 60]] = centres[[1, 2]]  # a point exactly at the centre of blobs 1 and 2: the most typical
    return x, labels


def test_typicality_is_highest_in_the_dense_centre():
    x = np.array([[0.0], [0.1], [-0.1], [0.2], [5.0]])
    t = typicality(x, neighbours=2)
    assert t.argmax() == 0 and t.argmin() == 4


def test_typiclust_covers_the_groups_without_labels_first():
    x, labels = _blobs()
    picks = typiclust_batch(x, labeled=np.array([0]), k=2, seed=0)
    # 3 clusters (1 labeled + 2 picks): the labeled blob 0 is covered, so one pick from each other blob,
    # each within a quarter of the noise's sd of its blob's centre (a random member is ~1.25 sd away).
    assert sorted(labels[picks].tolist()) == [1, 2]
    centres = np.array([[10.0, 0.0], [0.0, 10.0]])[labels[picks] - 1]
    assert np.linalg.norm(x[picks] - centres, axis=1).max() < 0.25
    with pytest.raises(ValueError, match="3 picks asked but only 2 unlabeled rows remain"):
        typiclust_batch(x[:3], labeled=np.array([0]), k=3)


def test_cover_modifier_parses():
    assert parse_strategy("margin+cover2+lp")[1] == {"cover_per_class": 2, "learner": "propagation"}
    with pytest.raises(ValueError, match="unknown modifier 'cover'"):
        parse_strategy("margin+cover")
