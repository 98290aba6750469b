"""Complementary candidate sampling: distinctness, -R quota balance, determinism, impossible settings."""
from collections import Counter

import numpy as np
import pytest

from labelers.vlm.sampling import CandidateSampler

K = 10


def biased_answer(candidates):
    """A VLM with the seed's measured bias: answers "truck" (9) whenever it is shown."""
    return 9 if 9 in candidates else candidates[0]


def simulate(n_images=600, rounds=3, distinct=True, balance=True, num_options=4, answer=biased_answer):
    sampler = CandidateSampler(K, num_options, rounds, n_images, distinct, balance, seed=7)
    labels, sets = {}, {}
    keys = [f"img{i}" for i in range(n_images)]
    for i in sampler.processing_order(keys):
        chosen = []
        for r in range(rounds):
            candidates = sampler.candidates(keys[i], r, chosen)
            sets[(keys[i], r)] = candidates
            label = answer(candidates)
            sampler.record(label)
            chosen.append(label)
        labels[keys[i]] = chosen
    return labels, sets, sampler


def test_candidates_are_distinct_and_exclude_earlier_cls():
    labels, sets, _ = simulate(rounds=5)
    for (key, r), candidates in sets.items():
        assert len(set(candidates)) == 4 and all(0 <= c < K for c in candidates)
        assert not set(candidates) & set(labels[key][:r])
    assert all(len(set(v)) == 5 for v in labels.values())   # true distinctness


def test_without_distinct_labels_can_repeat():
    labels, _, _ = simulate(distinct=False, balance=False)
    assert any(len(set(v)) < len(v) for v in labels.values())


def test_quota_balancing_spreads_a_biased_models_cls():
    plain, _, _ = simulate(balance=False)
    balanced, _, sampler = simulate(balance=True)
    share = lambda labels: Counter(c for v in labels.values() for c in v)[9] / sum(map(len, labels.values()))
    assert share(plain) > 0.25                # truck dominates without balancing (shown in ~40 % of rounds)
    assert share(balanced) < 0.15             # near the uniform 10 %
    counts = Counter(c for v in balanced.values() for c in v)
    assert max(counts.values()) / min(counts.values()) < 1.6
    # quotas were spent exactly once per label
    np.testing.assert_allclose(sampler.quota, 3 * 600 / K - np.bincount([c for v in balanced.values() for c in v],
                                                                         minlength=K))


def test_same_image_and_round_draw_the_same_set():
    a = CandidateSampler(K, 4, 3, 10, balance=False, seed=1)
    b = CandidateSampler(K, 4, 3, 10, balance=False, seed=1)
    assert a.candidates("cat/1.jpg", 2, [3]) == b.candidates("cat/1.jpg", 2, [3])
    # ... while other images and rounds get their own draws
    assert len({tuple(a.candidates(f"k{i}", r)) for i in range(20) for r in range(3)}) > 40


def test_uniform_sampling_shows_each_class_evenly():
    sampler = CandidateSampler(K, 4, 1, 1, distinct=False, balance=False, seed=3)
    shown = Counter(c for i in range(3000) for c in sampler.candidates(f"k{i}", 0))
    assert all(abs(n / 3000 - 0.4) < 0.05 for n in shown.values())


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_options=11), "num_options"), (dict(num_options=1), "num_options"),
    (dict(num_options=4, rounds=8, distinct=True), "need at least 11 classes"),
    (dict(quota_floor=0), "quota_floor"),
])
def test_impossible_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CandidateSampler(K, **kwargs)
