"""Labeling rules: per-class thresholds hit the target precision, the GMM separates two modes."""
import numpy as np
import pytest

from labelers.relabel.labeling import (apply_original, apply_replacements, calibrate_replacements, calibrate_thresholds,
                                       gmm_labels, image_scores,
                                       label_images)


def _synthetic(n, rng, k=3):
    """Truth with ~30 % positives; positive scores ~ Beta(5, 2), negative ~ Beta(2, 5), overlapping."""
    truth = rng.random((n, k)) < 0.3
    scores = np.where(truth, rng.beta(5, 2, (n, k)), rng.beta(2, 5, (n, k)))
    return scores, truth


def test_per_class_thresholds_hit_the_target_precision_on_held_out_data():
    rng = np.random.default_rng(0)
    cal_scores, cal_truth = _synthetic(4000, rng)
    test_scores, test_truth = _synthetic(4000, rng)
    for target in (0.8, 0.9, 0.95):
        thresholds = calibrate_thresholds(cal_scores, cal_truth, target)
        predicted = test_scores > thresholds
        precision = (predicted & test_truth).sum(0) / predicted.sum(0)
        assert np.all(precision > target - 0.03), (target, precision)
        assert np.all(predicted.sum(0) > 100)  # not trivially precise by accepting almost nothing


def test_per_class_threshold_by_hand_and_fallback_warns(caplog):
    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]])
    truth = np.array([[1], [1], [0], [1], [0]])
    # precision of the top 1..5: 1, 1, 2/3, 3/4, 3/5 -> for 0.75 accept the top 4: threshold between 0.6 and 0.5
    assert calibrate_thresholds(scores, truth, 0.75, min_positives=1) == pytest.approx([0.55])
    assert calibrate_thresholds(scores, truth, 0.95, min_positives=1) == pytest.approx([0.75])
    assert calibrate_thresholds(scores, truth, 0.9, fallback=0.42, min_positives=5) == pytest.approx([0.42])
    assert "fallback threshold 0.42" in caplog.text


def test_per_class_thresholds_on_the_added_labels_leave_the_originals_out_by_hand():
    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]])
    truth = np.array([[1], [1], [0], [1], [0]])
    original = np.array([[1], [1], [0], [0], [0]], bool)  # the two top images already have the class
    # counted: 0.7 (wrong), 0.6 (right), 0.5 (wrong): precision of the top 1..3 = 0, 1/2, 1/3
    assert calibrate_thresholds(scores, truth, 0.5, min_positives=1, exclude=original) == pytest.approx([0.55])
    # without excluding, the originals' easy hits reach 0.75 down to 0.6: the added labels would be 1 of 2
    assert calibrate_thresholds(scores, truth, 0.75, min_positives=1) == pytest.approx([0.55])
    assert calibrate_thresholds(scores, truth, 0.75, fallback=1.0, min_positives=1, exclude=original) == \
        pytest.approx([1.0])  # unreachable on the added labels: add none


def test_gmm_separates_two_synthetic_modes():
    rng = np.random.default_rng(1)
    high = rng.normal(0.85, 0.05, 150).clip(0, 1)
    low = rng.normal(0.15, 0.08, 350).clip(0, 1)
    scores = np.r_[high, low][:, None]
    labels = gmm_labels(scores)
    assert labels[:150, 0].mean() > 0.98 and labels[150:, 0].mean() < 0.02


def test_gmm_with_few_images_warns_and_thresholds(caplog):
    labels = gmm_labels(np.array([[0.2], [0.7]]), fallback=0.5)
    assert labels[:, 0].tolist() == [False, True] and "using the threshold 0.50" in caplog.text


def test_every_class_of_every_region_counts_and_the_original_is_kept_or_dropped():
    regions = [np.array([[0.9, 0.6, 0.1], [0.2, 0.1, 0.7]])]  # class 1 is never an argmax but scores 0.6
    scores = image_scores(regions)
    assert scores.tolist() == [[0.9, 0.6, 0.7]]
    assert label_images(scores, np.array([0]), "threshold", 0.5).tolist() == [[True, True, True]]
    low = np.array([[0.1, 0.2, 0.9]])
    assert apply_original(low > 0.5, np.array([0]), keep_original=True).tolist() == [[True, False, True]]
    assert apply_original(low > 0.5, np.array([0]), keep_original=False).tolist() == [[False, False, True]]
    # dropping the original never leaves an image without labels
    assert apply_original(low > 0.95, np.array([1]), keep_original=False).tolist() == [[False, True, False]]


def test_the_seeds_argmax_rule_by_hand():
    from labelers.relabel.labeling import argmax_union

    regions = [np.array([[0.9, 0.6, 0.1], [0.2, 0.1, 0.55], [0.3, 0.4, 0.2]])]
    assert argmax_union(regions, 0.5).tolist() == [[True, False, True]]  # region 3's argmax 0.4 is below
    assert argmax_union(regions, None).tolist() == [[True, True, True]]  # naive: every argmax counts


def _noisy_originals(n, rng, k=4, noise=0.2):
    """Single-object truth, a given label flipped at `noise`, and scores whose top class is the true one more
    often the surer the head is (confidence ~ U(0, 1); the top class is right with probability confidence)."""
    true = rng.integers(0, k, n)
    original = np.where(rng.random(n) < noise, (true + rng.integers(1, k, n)) % k, true)
    sure = rng.random(n)
    top = np.where(rng.random(n) < sure, true, rng.integers(0, k, n))
    scores = rng.random((n, k)) * 0.3 * (1 - sure[:, None])
    scores[np.arange(n), top] = 0.4 + 0.6 * sure
    truth = np.zeros((n, k), bool)
    truth[np.arange(n), true] = True
    return scores, truth, original


def test_replace_margins_hit_their_target_precision_on_held_out_scores():
    rng = np.random.default_rng(3)
    cal, test = _noisy_originals(20000, rng), _noisy_originals(20000, rng)
    for target in (0.7, 0.9):
        margins = calibrate_replacements(*cal, target)
        scores, truth, original = test
        swapped = apply_replacements(np.eye(4, dtype=bool)[original], scores, original, margins)
        changed = np.flatnonzero((swapped != np.eye(4, dtype=bool)[original]).any(1))
        rows = np.arange(len(truth))
        right = truth[changed, swapped[changed].argmax(1)] & ~truth[changed, original[changed]]
        assert len(changed) > 200 and right.mean() > target - 0.03, (target, len(changed), right.mean())
        # fixing wrong originals raises the labels' precision above keep-original's
        assert (swapped & truth).sum() > (np.eye(4, dtype=bool)[original][rows] & truth).sum()


def test_replace_margins_by_hand_with_the_pooled_fallback():
    # class 1 is the top class of 3 candidates (margins 0.8, 0.6, 0.2); only the two widest are right swaps
    scores = np.array([[0.05, 0.85], [0.1, 0.7], [0.4, 0.6], [0.9, 0.1]])
    truth = np.array([[0, 1], [0, 1], [1, 0], [1, 0]], bool)
    original = np.array([0, 0, 0, 0])  # image 3's top class is its original: not a candidate
    margins = calibrate_replacements(scores, truth, original, 0.9, min_positives=1)
    assert margins[1] == pytest.approx(0.4)  # between 0.6 (last right swap) and 0.2
    # class 0 has no candidates: the pooled margin (same candidates here)
    assert margins[0] == pytest.approx(0.4)
    labels = apply_replacements(np.eye(2, dtype=bool)[original], scores, original, margins)
    assert labels.tolist() == [[False, True], [False, True], [True, False], [True, False]]
    # a swap of a right original for another right class is not counted as right: unreachable target, no swap
    both = np.array([[1, 1], [1, 1], [1, 0], [1, 0]], bool)
    assert calibrate_replacements(scores, both, original, 0.5, min_positives=1)[1] == pytest.approx(2.0)
