import threading

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


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("order", ["stored", "shuffled", "from the middle", "with keys SQLite alone holds"])
def test_a_pool_streamed_in_any_order_scores_as_the_same_rows_in_memory(tmp_path, order, threads):
    # Blocks are looked up in the read-ahead thread, as views of the file (stored runs) or gathered copies;
    # whichever way a block came, each row's scores are those of the matrix in memory.
    features = _features(1200, 16, seed=8)
    head = ClassifierHead([str(i) for i in range(5)]).init_from_text(np.random.default_rng(9).normal(size=(5, 16)),
                                                                     3.0)
    keys = [f"{i:064x}" for i in range(len(features))]  # content keys: the sidecar's fast conversion
    cache = EmbeddingCache(tmp_path / "cache.sqlite3")
    cache.put_many("emb", dict(zip(keys, features)))
    rows = {"stored": np.arange(1200), "shuffled": np.random.default_rng(10).permutation(1200),
            "from the middle": np.r_[700:1200, 0:700], "with keys SQLite alone holds": np.arange(1202)}[order]
    if order == "with keys SQLite alone holds":  # wider than the sidecar's 64 bytes: read from SQLite
        keys += ["x" * 70, "y" * 80]
        features = np.concatenate([features, _features(2, 16, seed=11)])
        cache.put_many("emb", dict(zip(keys[-2:], features[-2:])))
    wanted = [keys[i] for i in rows]
    streamed = score_blocks(head, cache.iter_blocks("emb", wanted, block_rows=256), len(wanted), "margin",
                            block_rows=100, threads=threads)
    whole = score_pool(head, features[rows], "margin", block_rows=100, threads=threads)
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


def _prior_head(k=5, c=30, d=16, seed=1):
    rng = np.random.default_rng(seed)
    aggregation = np.zeros((k, c))
    for label in range(k):
        aggregation[label, label * 5:label * 5 + 3] = 1.0
    prior = ClassifierPrior([str(i) for i in range(k)], rng.normal(size=(c, d)), rng.normal(size=c), aggregation, 3.0)
    return ClassifierHead([str(i) for i in range(k)]).init_from_prior(prior)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", ["plain", "huge_logits", "prior"])
def test_scoring_on_worker_threads_equals_one_thread(strategy, case):
    # threads > 1 scores whole blocks on Python threads (torch on one thread each) into disjoint slices: every
    # block must land at its own rows, with the shifted exp (huge logits) and a prior's offset as on one thread.
    d = 16
    if case == "prior":
        head = _prior_head(d=d)
    else:
        head = ClassifierHead([str(i) for i in range(7)]).init_from_text(
            np.random.default_rng(7).normal(size=(7, d)), 500.0 if case == "huge_logits" else 3.0)
    features = _features(1037, d, seed=8)  # 1037 = 16 blocks of 64 + a short one
    keys = [f"k{i}" for i in range(len(features))]
    one = score_pool(head, features, strategy, keys=keys, seed=3, block_rows=64, threads=1)
    three = score_pool(head, features, strategy, keys=keys, seed=3, block_rows=64, threads=3)
    for name in ("predicted", "confidence", "score", "uncertainty"):
        np.testing.assert_array_equal(getattr(three, name), getattr(one, name), err_msg=name)
    probs = head.predict_proba(features)
    np.testing.assert_allclose(three.score, prediction_score(probs, strategy, keys=keys, seed=3), atol=2e-5)
    np.testing.assert_array_equal(three.predicted, probs.argmax(axis=1))


def test_worker_threads_put_back_the_callers_torch_threads_and_raise_a_workers_error():
    import torch

    head = ClassifierHead(list("abc")).init_from_text(np.random.default_rng(0).normal(size=(3, 4)), 2.0)
    features = _features(300, 4)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        # a worker's torch.set_num_threads(1) reaches past its thread (threads started later, and depending on
        # the OpenMP runtime the caller's): without putting 3 back, they would run torch on one thread
        score_pool(head, features, "margin", block_rows=32, threads=2)
        assert torch.get_num_threads() == 3
        seen = []
        later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        later.start()
        later.join()
        assert seen == [3]
        blocks = (features[i:i + 50] for i in range(0, 300, 50))
        with pytest.raises(ValueError, match="hold more than the 200 rows announced"):
            score_blocks(head, blocks, 200, "margin", block_rows=32, threads=2)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads >= 1"):
        score_pool(head, features, "margin", threads=0)


def test_block_rows_keep_a_blocks_logits_near_l2_size():
    from labelers.pool_scoring import LOGITS_BYTES, rows_in_l2

    assert rows_in_l2(100) == 4096 == LOGITS_BYTES // 400  # 100 float32 logits per row: 1.6 MB
    assert rows_in_l2(1000) == 409
    assert rows_in_l2(2) == 16384 and rows_in_l2(100_000) == 256  # clamped both ways


def test_a_pool_in_stored_order_but_one_key_differing_in_its_last_byte_is_looked_up(tmp_path):
    # The stored-order shortcut compares the keys as 64-bit words: a key differing only in its last byte must
    # not pass as the stored one (it is read from its own row instead).
    cache = EmbeddingCache(tmp_path / "cache.sqlite3")
    vectors = {f"{i:063x}{c}": np.full(3, i * 2 + (c == "b"), np.float32) for i in range(5) for c in "ab"}
    cache.put_many("emb", vectors)
    stored = list(vectors)
    wanted = stored[:]
    wanted[3] = stored[2]  # ...1a instead of ...1b: same first 63 characters
    got = np.concatenate(list(cache.iter_blocks("emb", wanted)))
    np.testing.assert_array_equal(got[:, 0], [vectors[k][0] for k in wanted])
