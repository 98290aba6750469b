import numpy as np
import pytest

from labelers.priors import FLOOR, ClassifierPrior, label_probabilities


def test_matched_labels_take_the_mean_of_their_classes_and_unmatched_keep_one_kth():
    q = np.array([[0.5, 0.2, 0.1, 0.2]])  # four source classes
    a = np.array([[1, 0, 1, 0],            # label 0 <- classes 0 and 2: mean 0.3
                  [0, 1, 0, 0],            # label 1 <- class 1: mean 0.2
                  [0, 0, 0, 0],            # label 2: no class
                  [0, 0, 0, 0]])           # label 3: no class
    # matched labels share 1 - 2/4 = 0.5 in proportion 0.3 : 0.2; the others keep 1/4
    np.testing.assert_allclose(label_probabilities(q, a), [[0.3, 0.2, 0.25, 0.25]])


def test_all_matched_is_renormalised_and_none_matched_is_uniform():
    q = np.array([[0.5, 0.2, 0.3]])
    np.testing.assert_allclose(label_probabilities(q, [[1, 0, 0], [0, 1, 0]]), [[0.5 / 0.7, 0.2 / 0.7]])
    np.testing.assert_allclose(label_probabilities(q, np.zeros((4, 3))), [[0.25] * 4])


def test_shared_class_splits_and_overfull_column_is_refused():
    q = np.array([[0.4, 0.6]])
    # label 0: (0.4 + 0.3) / 1.5; label 1: 0.3 / 0.5
    means = np.array([0.7 / 1.5, 0.6])
    np.testing.assert_allclose(label_probabilities(q, [[1, 0.5], [0, 0.5]]), [means / means.sum()])
    with pytest.raises(ValueError, match="at most one label"):
        label_probabilities(q, [[1, 1], [0, 1]])
    with pytest.raises(ValueError, match="do not match"):
        label_probabilities(q, [[1, 0, 0]])


def test_classifier_prior_scales_unit_features_before_the_source_classifier():
    weight = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    prior = ClassifierPrior(["a", "b"], weight, np.zeros(3), [[1, 0, 0], [0, 1, 0]], feature_scale=3.0)
    x = np.array([[1.0, 0.0]])
    logits = np.array([3.0, 0.0, -3.0])  # weight @ (3 * x)
    q = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(prior.proba(x), [[q[0] / (q[0] + q[1]), q[1] / (q[0] + q[1])]], rtol=1e-6)
    assert prior.matched == ["a", "b"]
    assert (ClassifierPrior(["a", "b"], weight, np.zeros(3), [[0, 0, 0], [0, 1, 0]]).proba(x * 50) >= FLOOR).all()
    with pytest.raises(ValueError, match="shapes disagree"):
        ClassifierPrior(["a", "b", "c"], weight, np.zeros(3), [[1, 0, 0], [0, 1, 0]])


def test_proba_over_the_used_source_classes_equals_the_full_softmax():
    # proba computes only the logits of classes some label pools (the softmax normaliser cancels); it must equal
    # the definition: label_probabilities of the softmax over all C source classes, clipped at FLOOR.
    rng = np.random.default_rng(3)
    c, d, k = 60, 16, 4
    aggregation = np.zeros((k, c))
    for label, classes in enumerate([[0, 5, 9], [12], [30, 31, 40, 59], []]):
        aggregation[label, classes] = 1.0
    aggregation[0, 20] = aggregation[1, 20] = 0.5  # a class shared by two labels
    prior = ClassifierPrior(list("abcd"), rng.normal(size=(c, d)), rng.normal(size=c), aggregation, 4.0)
    x = rng.normal(size=(50, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    logits = prior.source_logits(x).astype(np.float64)
    q = np.exp(logits - logits.max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(prior.proba(x), np.clip(label_probabilities(q, aggregation), FLOOR, 1.0),
                               rtol=1e-5, atol=1e-9)
    none = ClassifierPrior(list("ab"), rng.normal(size=(c, d)), rng.normal(size=c), np.zeros((2, c)))
    np.testing.assert_allclose(none.proba(x), 0.5)
