import numpy as np
import pytest

from labelers.cache import EmbeddingCache
from labelers.head import ClassifierHead
from labelers.pool_scoring import score_blocks, score_pool
from labelers.priors import ClassifierPrior
from labelers.strategies import STRATEGIES, prediction_score, uncertainty


def _features(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("strategy", ["margin", "entropy", "least"])
def test_pool_scoring_adds_the_label_probability_prior_like_predict_proba(strategy):
    # A head with an ImageNet-style prior scores logits = g * log p(x) + x W^T + b; score_pool used to drop
    # the prior's offset, ranking an untrained head's pool as if it were uniform.
    rng = np.random.default_rng(1)
    c, d, k = 30, 16, 5
    aggregation = np.zeros((k, c))
    for label in range(k):
        aggregation[label, label * 5:label * 5 + 3] = 1.0
    prior = ClassifierPrior(list("abcde"), rng.normal(size=(c, d)), rng.normal(size=c), aggregation, 3.0)
    head = ClassifierHead(list("abcde")).init_from_prior(prior)
    features = _features(300, d)
    labels = rng.integers(0, k, 40)
    head.fit(features[:40], labels)
    fast = score_pool(head, features, strategy, block_rows=64)
    probs = head.predict_proba(features)
    np.testing.assert_allclose(fast.score, prediction_score(probs, strategy), atol=2e-5)
    np.testing.assert_allclose(fast.uncertainty, uncertainty(probs, strategy), atol=2e-5)
    np.testing.assert_array_equal(fast.predicted, probs.argmax(axis=1))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_pool_streamed_from_the_cache_scores_as_the_matrix_in_memory(tmp_path, strategy):
    features = _features(1000, 24, seed=2)
    head = ClassifierHead([str(i) for i in range(6)]).init_from_text(np.random.default_rng(3).normal(size=(6, 24)),
                                                                     4.0)
    head.temperature = 1.7
    keys = [f"k{i:05d}" for i in range(len(features))]
    cache = EmbeddingCache(tmp_path / "cache.sqlite3")
    cache.put_many("emb", dict(zip(keys, features)))
    whole = score_pool(head, features, strategy, keys=keys, seed=4, block_rows=100)
    streamed = score_blocks(head, cache.iter_blocks("emb", keys, block_rows=333), len(keys), strategy,
                            keys=keys, seed=4, block_rows=100)
    for name in ("predicted", "confidence", "score", "uncertainty"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(whole, name), err_msg=name)


def test_streaming_refuses_a_missing_vector_and_a_wrong_row_count(tmp_path):
    cache = EmbeddingCache(tmp_path / "cache.sqlite3")
    cache.put_many("emb", {"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)})
    with pytest.raises(KeyError, match="no vector for key c"):
        list(cache.iter_blocks("emb", ["a", "b", "c"], block_rows=2))
    head = ClassifierHead(["x", "y"])
    with pytest.raises(ValueError, match="held 2 rows, 3 were announced"):
        score_blocks(head, cache.iter_blocks("emb", ["a", "b"]), 3, "margin")


@pytest.mark.parametrize("strategy", ["margin", "entropy", "least"])
@pytest.mark.parametrize("logit_scale", [0.5, 500.0])  # below and above SAFE_LOGIT: exp unshifted and shifted
def test_pool_scoring_equals_predict_proba_with_small_and_huge_logits(strategy, logit_scale):
    features = _features(500, 12, seed=5)
    head = ClassifierHead([str(i) for i in range(8)]).init_from_text(
        np.random.default_rng(6).normal(size=(8, 12)), logit_scale)
    fast = score_pool(head, features, strategy, block_rows=64)
    probs = head.predict_proba(features)
    np.testing.assert_allclose(fast.score, prediction_score(probs, strategy), atol=2e-5)
    np.testing.assert_allclose(fast.uncertainty, uncertainty(probs, strategy), atol=2e-5)
    np.testing.assert_allclose(fast.confidence, probs.max(axis=1), atol=2e-5)


@pytest.mark.parametrize("strategy", ["margin", "least"])
def test_tied_top_classes_predict_the_first_one_with_margin_zero(strategy):
    # The arg max and the maximum are found separately (NumPy's argmax, then a gather): on a tie both must
    # still name the first tied class, and the second-largest probability must be the tied one, not the next.
    head = ClassifierHead(list("abcd")).init_from_text(np.eye(4, 3), 1.0)  # class 3 has weight 0
    features = np.array([[0.0, 0.0, 0.0],     # all four tied: p = 1/4 each
                         [0.0, 0.5, 0.5],     # b and c tied at the top
                         [1.0, 0.0, 0.0]], np.float32)
    fast = score_pool(head, features, strategy)
    np.testing.assert_array_equal(fast.predicted, [0, 1, 0])
    e = np.exp(1.0)
    expected_p1 = [0.25, np.exp(0.5) / (2 * np.exp(0.5) + 2), e / (e + 3)]
    np.testing.assert_allclose(fast.confidence, expected_p1, rtol=1e-6)
    if strategy == "margin":
        np.testing.assert_allclose(fast.score, [0.0, 0.0, (e - 1) / (e + 3)], atol=1e-7)
