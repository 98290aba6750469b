import numpy as np
import pytest

from labelers.strategies import STRATEGIES, cold_start, prediction_score, select_batch, uncertainty

P = np.array([[0.7, 0.2, 0.1],      # confident
              [0.4, 0.35, 0.25],    # close call between two classes
              [1 / 3, 1 / 3, 1 / 3]])  # no idea


def test_least_confidence_by_hand():
    np.testing.assert_allclose(uncertainty(P, "least"), [0.3, 0.6, 2 / 3])
    np.testing.assert_allclose(prediction_score(P, "least"), [0.7, 0.4, 1 / 3])


def test_margin_by_hand():
    np.testing.assert_allclose(uncertainty(P, "margin"), [0.5, 0.95, 1.0])
    np.testing.assert_allclose(prediction_score(P, "margin"), [0.5, 0.05, 0.0], atol=1e-12)


def test_entropy_by_hand_over_all_classes():
    h0 = -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))
    np.testing.assert_allclose(uncertainty(P, "entropy")[0], h0)
    np.testing.assert_allclose(uncertainty(P, "entropy")[2], np.log(3))
    np.testing.assert_allclose(prediction_score(P, "entropy"), 1 - uncertainty(P, "entropy") / np.log(3), atol=1e-12)


def test_entropy_uses_every_class_not_top5():
    # Same top-5, different tails: a top-5-only entropy (the anchor's bug) could not tell them apart.
    a = np.array([[0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.0, 0.0]])
    b = np.array([[0.5, 0.1, 0.1, 0.1, 0.1, 0.05, 0.025, 0.025]])
    assert uncertainty(b, "entropy")[0] > uncertainty(a, "entropy")[0]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_score_is_confidence_sorting_ascending_puts_most_uncertain_first(strategy):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5), size=200)
    keys = list(range(200))
    score = prediction_score(probs, strategy, keys=keys, seed=3)
    u = uncertainty(probs, strategy, keys=keys, seed=3)
    assert ((score >= 0) & (score <= 1)).all()
    order = np.argsort(score)
    assert np.all(np.diff(u[order]) <= 1e-12)  # ascending score == descending uncertainty


def test_random_score_is_stable_per_key_and_seed():
    probs = np.full((3, 2), 0.5)
    first = prediction_score(probs, "random", keys=["a", "b", "c"], seed=7)
    again = prediction_score(probs[::-1], "random", keys=["c", "b", "a"], seed=7)
    np.testing.assert_array_equal(first, again[::-1])
    assert not np.allclose(first, prediction_score(probs, "random", keys=["a", "b", "c"], seed=8))


def test_unknown_strategy_and_bad_shapes_fail_clearly():
    with pytest.raises(ValueError, match="unknown strategy 'confidence'"):
        uncertainty(P, "confidence")
    with pytest.raises(ValueError, match="shape"):
        uncertainty(np.ones(3), "margin")


def test_select_batch_takes_most_uncertain_without_repeats():
    picks = select_batch(P, 2, "margin")
    assert list(picks) == [2, 1]
    assert len(set(select_batch(np.random.default_rng(0).dirichlet(np.ones(4), 50), 50, "entropy"))) == 50


def test_select_batch_kmeans_spreads_over_clusters():
    # Two tight clusters; the 10 most uncertain points all sit in cluster A. Diversity must reach cluster B.
    rng = np.random.default_rng(0)
    features = np.vstack([rng.normal(0, 0.01, (10, 2)), rng.normal(5, 0.01, (10, 2))])
    probs = np.vstack([np.tile([0.5, 0.5], (10, 1)), np.tile([0.6, 0.4], (10, 1))])
    plain = select_batch(probs, 2, "margin")
    diverse = select_batch(probs, 2, "margin", features=features, diversity="kmeans", candidates_per_pick=10)
    assert (plain < 10).all()
    assert (diverse < 10).sum() == 1 and (diverse >= 10).sum() == 1


def test_class_balance_round_robins_predicted_classes():
    probs = np.array([[0.51, 0.49]] * 5 + [[0.2, 0.8]] * 5)
    picks = select_batch(probs, 2, "margin", class_balance=True)
    assert set(probs[picks].argmax(axis=1)) == {0, 1}


def test_cold_start_typical_picks_one_dense_point_per_cluster():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 0], [0, 10]])
    features = np.vstack([c + rng.normal(0, 1, (50, 2)) for c in centers])
    picks = cold_start(features, 3, "typical")
    assert sorted(picks // 50) == [0, 1, 2]
    for pick in picks:  # the pick is near its cluster's centre, not an outlier
        assert np.linalg.norm(features[pick] - centers[pick // 50]) < 1.0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_pool_scoring_matches_reference_path(strategy):
    from labelers.head import ClassifierHead
    from labelers.pool_scoring import score_pool

    rng = np.random.default_rng(0)
    head = ClassifierHead([str(i) for i in range(7)]).init_from_text(rng.normal(size=(7, 16)), 3.0)
    features = rng.normal(size=(1000, 16)).astype(np.float32)
    keys = list(range(1000))
    fast = score_pool(head, features, strategy, keys=keys, seed=5, chunk_size=128)
    probs = head.predict_proba(features)
    np.testing.assert_allclose(fast.score, prediction_score(probs, strategy, keys=keys, seed=5), atol=2e-5)
    np.testing.assert_allclose(fast.uncertainty, uncertainty(probs, strategy, keys=keys, seed=5), atol=2e-5)
    np.testing.assert_array_equal(fast.predicted, probs.argmax(axis=1))
