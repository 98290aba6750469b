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
    fast = score_pool(head, features, strategy, keys=keys, seed=5, block_rows=128)
    probs = head.predict_proba(features)
    np.testing.assert_allclose(fast.score, prediction_score(probs, strategy, keys=keys, seed=5), atol=2e-5)
    np.testing.assert_allclose(fast.uncertainty, uncertainty(probs, strategy, keys=keys, seed=5), atol=2e-5)
    np.testing.assert_array_equal(fast.predicted, probs.argmax(axis=1))


def test_gaussian_weight_by_hand_and_binary_equivalence():
    from labelers.strategies import gaussian_key

    # margin 0: weight 1, the key is the uniform draw itself; margin 0.4: weight exp(-1/2).
    np.testing.assert_allclose(gaussian_key(np.array([0.0, 0.4]), np.array([0.25, 0.25])),
                               [0.25, 0.25 ** (1 / np.exp(-0.5))])
    # Two choices (Accept/Reject): a Gaussian of width 0.2 around p = 0.5, as Active-Labeler samples.
    p = np.linspace(0.01, 0.99, 9)
    probs = np.stack([1 - p, p], axis=1)
    r = np.full(len(p), 0.5)
    weight = np.log(0.5) / np.log(gaussian_key(np.abs(2 * p - 1), r))
    np.testing.assert_allclose(weight, np.exp(-(p - 0.5) ** 2 / (2 * 0.2 ** 2)))
    np.testing.assert_allclose(1 - prediction_score(probs, "gaussian", keys=range(9), seed=2),
                               uncertainty(probs, "gaussian", keys=range(9), seed=2))


def test_gaussian_draws_in_proportion_to_the_weight():
    from labelers.strategies import gaussian_key

    # One close call (margin 0, weight 1) and three confident items (margin 0.8, weight exp(-2) each):
    # the top key must be the close call with probability 1 / (1 + 3 exp(-2)) = 0.711.
    margins = np.array([0.0, 0.8, 0.8, 0.8])
    draws = np.random.default_rng(0).random((20000, 4))
    first = np.argmax(gaussian_key(margins[None], draws), axis=1)
    assert abs((first == 0).mean() - 1 / (1 + 3 * np.exp(-2))) < 0.015
    # ...and unlike margin it still draws confident items, never the same item twice.
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.95, 0.05], [0.99, 0.01]])
    picks = select_batch(probs, 4, "gaussian", seed=3)
    assert sorted(picks.tolist()) == [0, 1, 2, 3]


def test_binary_accept_reject_through_every_strategy():
    probs = np.array([[0.5, 0.5], [0.8, 0.2], [0.02, 0.98], [0.45, 0.55]])  # columns: Reject, Accept
    for strategy in ("margin", "least", "entropy"):
        assert select_batch(probs, 2, strategy).tolist() == [0, 3]
    assert set(select_batch(probs, 4, "random").tolist()) == {0, 1, 2, 3}
