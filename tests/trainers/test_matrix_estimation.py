"""Transition matrices estimated without the full truth: shrunk gold counts and anchor/EM from predictions."""
import numpy as np
import pytest

from trainers import matrices
from trainers.matrix_estimation import (anchor_matrix, cl_counts, dirichlet_mean, distance, em_matrix,
                                        from_predictions, marginal_prior, shrunk)
from trainers.matrices import TransitionMatrixError

K = 10


def rounds(true, T, num_rounds, rng):
    """Return (N, R) CLs: each round an independent draw from T[y] (repeats possible, as a VLM's rounds)."""
    cum = T.cumsum(axis=1)
    u = rng.random((len(true), num_rounds))
    return np.minimum((u[:, :, None] > cum[true][:, None, :]).sum(axis=2), K - 1)


def test_counts_and_dirichlet_mean_by_hand():
    true = np.array([0, 0, 1, -1])
    cl = np.array([[1, 1, 2], [2, -1, -1], [0, 2, -1], [0, 1, 2]])
    counts = cl_counts(true, cl, 3)
    assert counts.tolist() == [[0, 2, 2], [1, 0, 1], [0, 0, 0]]  # the repeat counts twice; row 3 has no gold
    T = dirichlet_mean(counts, matrices.uniform(3), 2.0)
    assert np.allclose(T[0], [0, 3 / 6, 3 / 6]) and np.allclose(T[1], [2 / 4, 0, 2 / 4])
    assert np.allclose(T[2], [0.5, 0.5, 0])  # no gold CLs: the prior row


def test_marginal_prior_is_the_cl_frequency_without_the_own_class():
    prior = marginal_prior(np.array([[0, 0, 1], [0, -1, -1]]), 3)  # counts 3, 1, 0 -> +1: 4, 2, 1
    assert np.allclose(prior[0], [0, 2 / 3, 1 / 3]) and np.allclose(prior[2], [4 / 6, 2 / 6, 0])


@pytest.mark.parametrize("gold", [50, 100, 500])
def test_shrunk_estimate_is_closer_to_the_truth_than_raw_and_uniform(gold):
    T = matrices.strong(K, seed=3)
    raw_d, shrunk_d, uniform_d = [], [], []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        true = rng.integers(0, K, gold)
        cl = rounds(true, T, 3, rng)
        raw, _ = matrices.empirical(true, cl, K)
        estimate, info = shrunk(true, cl, K, seed=seed)
        raw_d.append(distance(raw, T)["frobenius"])
        shrunk_d.append(distance(estimate, T)["frobenius"])
        uniform_d.append(distance(matrices.uniform(K), T)["frobenius"])
    assert np.mean(shrunk_d) < np.mean(raw_d) and np.mean(shrunk_d) < np.mean(uniform_d)
    kl = distance(estimate, T)["kl"]
    assert np.isfinite(kl) and kl < distance(matrices.uniform(K), T)["kl"]
    assert np.allclose(estimate.sum(axis=1), 1) and info.gold_images == gold


def test_shrinkage_grows_when_the_truth_is_uniform():
    rng = np.random.default_rng(0)
    true = rng.integers(0, K, 300)
    cl = rounds(true, matrices.uniform(K), 3, rng)
    _, info = shrunk(true, cl, K, prior="uniform")
    assert info.strength >= 100  # the counts are noise around the prior: trust the prior


def test_shrunk_refuses_without_gold_and_with_too_few_for_folds():
    with pytest.raises(TransitionMatrixError, match="needs gold"):
        shrunk(np.full(4, -1), np.zeros((4, 1), dtype=int), 3)
    with pytest.raises(TransitionMatrixError, match="at least 5 gold images"):
        shrunk(np.array([0, 1, -1]), np.array([[1], [0], [0]]), 3)
    T, info = shrunk(np.array([0, 1, -1]), np.array([[1], [0], [0]]), 3, strength=0.0, prior="uniform")
    assert np.allclose(T[0], [0, 1, 0]) and info.strength == 0


def synthetic_predictions(true, rng, accuracy=0.8):
    """Return (N, K) model-like probabilities: right with probability ``accuracy``, confident when right."""
    logits = rng.normal(0, 1, (len(true), K))
    right = rng.random(len(true)) < accuracy
    logits[np.arange(len(true)), np.where(right, true, rng.integers(0, K, len(true)))] += 4
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("refine", ["anchor", "em"])
def test_matrix_from_predictions_beats_uniform_without_gold(refine):
    T = matrices.strong(K, seed=1)
    rng = np.random.default_rng(2)
    true = rng.integers(0, K, 3000)
    cl = rounds(true, T, 3, rng)
    estimate = from_predictions(synthetic_predictions(true, rng), cl, K, refine=refine)
    assert np.allclose(estimate.sum(axis=1), 1)
    assert distance(estimate, T)["frobenius"] < 0.5 * distance(matrices.uniform(K), T)["frobenius"]


def test_em_improves_on_anchors_when_predictions_are_weak():
    T = matrices.strong(K, seed=1)
    rng = np.random.default_rng(5)
    true = rng.integers(0, K, 4000)
    cl = rounds(true, T, 3, rng)
    probs = synthetic_predictions(true, rng, accuracy=0.55)
    anchors = anchor_matrix(probs, cl, K)
    assert distance(em_matrix(probs, cl, anchors), T)["frobenius"] < distance(anchors, T)["frobenius"]


def test_anchor_matrix_refuses_mismatched_predictions():
    with pytest.raises(TransitionMatrixError, match="predictions have shape"):
        anchor_matrix(np.ones((3, 4)) / 4, np.zeros((3, 1), dtype=int), 5)
