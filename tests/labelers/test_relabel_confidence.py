"""Confidence: MC dropout really varies, its mean converges; aggregation is hand-checked (no double softmax)."""
import numpy as np
import pytest
from PIL import Image

from labelers.relabel import confidence as conf


def _sigmoid_head(weight):
    return lambda x: 1 / (1 + np.exp(-(x @ weight)))


def test_mc_dropout_passes_differ_and_their_mean_converges():
    rng = np.random.default_rng(0)
    features, weight = rng.normal(size=(4, 64)), rng.normal(size=(64, 3)) / 8
    proba = _sigmoid_head(weight)
    passes = conf.mc_dropout(features, proba, passes=400, rate=0.3, seed=1)
    assert passes.shape == (400, 4, 3)
    assert np.abs(passes[0] - passes[1]).max() > 1e-3  # dropout is active (the seed's was not)
    # the mean of independent passes converges: two disjoint halves of 200 agree far better than two passes
    half_gap = np.abs(passes[:200].mean(0) - passes[200:].mean(0)).max()
    pass_gap = np.abs(passes[0] - passes[1]).max()
    assert half_gap < pass_gap / 5
    assert np.abs(passes.mean(0) - conf.mc_dropout(features, proba, 400, 0.3, seed=2).mean(0)).max() < 0.03


def test_mc_dropout_is_seeded_and_rate_zero_is_the_naive_pass():
    rng = np.random.default_rng(0)
    features, weight = rng.normal(size=(2, 8)), rng.normal(size=(8, 2))
    proba = _sigmoid_head(weight)
    assert np.array_equal(conf.mc_dropout(features, proba, 5, 0.2, seed=7), conf.mc_dropout(features, proba, 5, 0.2, seed=7))
    assert np.allclose(conf.mc_dropout(features, proba, 3, 0.0)[2], conf.naive(features, proba)[0], atol=1e-6)
    with pytest.raises(ValueError, match="dropout rate"):
        conf.mc_dropout(features, proba, 3, 1.0)


def test_mean_and_vote_aggregation_by_hand():
    # 3 passes, 1 region, 3 classes
    passes = np.array([[[0.9, 0.6, 0.1]], [[0.7, 0.4, 0.2]], [[0.8, 0.7, 0.0]]])
    assert np.allclose(conf.aggregate(passes, "mean"), [[0.8, 17 / 30, 0.1]])
    assert np.allclose(conf.aggregate(passes, "vote"), [[1.0, 2 / 3, 0.0]])  # share of passes > 0.5
    softmax_passes = np.array([[[0.5, 0.3, 0.2]], [[0.2, 0.7, 0.1]], [[0.6, 0.3, 0.1]]])
    # argmax votes 2/3 for class 0, 1/3 for class 1; the seed's softmax of these would give ~[0.41, 0.33, 0.26]
    assert np.allclose(conf.aggregate(softmax_passes, "vote", multi_label=False), [[2 / 3, 1 / 3, 0.0]])
    with pytest.raises(ValueError, match="unknown aggregation"):
        conf.aggregate(passes, "majority")


def test_mc_perturbation_scores_one_autoaugment_view_per_pass():
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)) for i in range(2)]
    embed = lambda ims: np.stack([np.asarray(im, np.float32).mean(axis=(0, 1)) / 255 for im in ims])
    proba = _sigmoid_head(np.eye(3) * 4)
    passes = conf.mc_perturbation(images, embed, proba, passes=12, seed=0)
    assert passes.shape == (12, 2, 3)
    assert len({round(float(p[0, 0]), 6) for p in passes}) > 3  # views really differ
    assert np.array_equal(passes, conf.mc_perturbation(images, embed, proba, passes=12, seed=0))
