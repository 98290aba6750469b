"""The learned labeling rule: features by hand, the threshold choice, and what it learns that thresholds cannot."""
import numpy as np
import pytest

from labelers.relabel import learned
from labelers.relabel.labeling import calibrate_thresholds, label_images
from labelers.relabel.metrics import multi_hot, set_metrics
from labelers.relabel.rounds import Holdout, RelabelSettings, best_round, run_rounds


def _logit(p):
    return np.log(p / (1 - p))


def test_pair_features_by_hand():
    scores = np.array([[0.9, 0.2, 0.5], [0.1, 0.3, 0.8]])
    features = learned.pair_features(scores, np.array([1, 2]))
    assert features.shape == (6, 8 + 3)
    row = features[1]  # image 0, class 1: the given label, third of three
    assert row[0] == pytest.approx(_logit(0.2))
    assert row[1] == pytest.approx(_logit(0.2) - _logit(0.9))  # gap to the top
    assert row[2] == pytest.approx(_logit(0.9)) and row[3] == pytest.approx(_logit(0.5))  # top, second
    assert row[4] == pytest.approx(_logit(0.2))  # the given label's score
    assert list(row[5:8]) == [1, 0, 0]  # given, not top, not second
    assert list(row[8:]) == [0, 1, 0]  # the class
    top = features[5]  # image 1, class 2: given and top
    assert list(top[5:8]) == [1, 1, 0] and top[1] == pytest.approx(0.0)
    assert list(features[4][5:8]) == [0, 0, 1]  # image 1, class 1: second


def test_decide_gives_at_least_the_most_probable_class_and_keeps_the_original_when_asked():
    proba = np.array([[0.2, 0.3, 0.1], [0.9, 0.6, 0.1]])
    assert learned.decide(proba, 0.5).tolist() == [[False, True, False], [True, True, False]]
    assert learned.decide(proba, 0.5, np.array([2, 2])).tolist() == [[False, True, True], [True, True, True]]


def test_the_threshold_is_the_highest_reaching_the_target_recall_else_the_best_f1():
    # one image, two true classes with probabilities 0.8 and 0.3, one absent class at 0.6
    proba, truth = np.array([[0.8, 0.3, 0.6]]), np.array([[True, True, False]])
    threshold, how = learned.choose_threshold(proba, truth, None, target_recall=1.0)
    assert threshold == pytest.approx(0.29) and "recall" in how  # the grid's (step 0.01) highest below 0.3
    # F1: {0, 1, 2} below 0.3 (P 2/3, R 1: 0.8), {0, 2} up to 0.6 (1/2), {0} up to 0.8 (2/3): the first wins
    threshold, how = learned.choose_threshold(proba, truth, None, target_recall=None)
    assert threshold < 0.3 and "F1 (0.800)" in how
    # a recall no threshold reaches: said, and the best-F1 one is used
    threshold, how = learned.choose_threshold(np.array([[0.8, 0.01, 0.6]]), truth, None, target_recall=1.0)
    assert "F1" in how
    with pytest.raises(ValueError, match="at least 50 held-out images"):
        learned.fit_learned_rule(proba, np.array([0]), truth)
    with pytest.raises(ValueError, match="do not match"):
        learned.fit_learned_rule(proba, np.array([0, 1]), truth)


def _noisy_scores(n, rng, k=4, flip=0.2):
    """Held-out-like image scores: the true class near 0.7 (its score sinks when the given label is wrong), the
    given label at 0.45 when wrong, the rest low. A per-class threshold sees the wrong given labels' 0.45 beside
    right labels' 0.45 of other images; only the image's context (is it the top class?) tells them apart."""
    true = rng.integers(k, size=n)
    wrong = rng.random(n) < flip
    given = np.where(wrong, (true + rng.integers(1, k, n)) % k, true)
    scores = rng.uniform(0.02, 0.2, size=(n, k))
    rows = np.arange(n)
    scores[rows, true] = np.where(wrong, rng.uniform(0.55, 0.95, n), rng.uniform(0.35, 0.95, n))
    scores[rows[wrong], given[wrong]] = rng.uniform(0.3, 0.5, wrong.sum())
    return scores, given, multi_hot([[t] for t in true], k)


def test_the_learned_rule_drops_wrong_given_labels_that_per_class_thresholds_keep():
    rng = np.random.default_rng(0)
    held_scores, held_given, held_truth = _noisy_scores(600, rng)
    scores, given, truth = _noisy_scores(2000, rng)
    rule = learned.fit_learned_rule(held_scores, held_given, held_truth)
    ours = set_metrics(rule.labels(scores, given, keep_original=False), truth)
    keep = set_metrics(multi_hot([[g] for g in given], 4), truth)
    per_class = set_metrics(label_images(scores, given, "per-class", thresholds=calibrate_thresholds(
        held_scores, held_truth, 0.9), keep_original=False), truth)
    print("keep", keep, "per-class", per_class, "learned", ours)
    assert ours["f1"] > keep["f1"] + 0.1 and ours["precision"] > 0.95, (ours, keep)
    assert ours["f1"] > per_class["f1"] + 0.02, (ours, per_class)
    # kept originals stay, whatever the rule thinks of them
    assert rule.labels(scores, given, keep_original=True)[np.arange(len(given)), given].all()


def test_rounds_with_the_learned_rule_beat_keep_original_and_need_a_holdout():
    from tests.labelers.test_relabel_rounds import _scenes

    rng = np.random.default_rng(3)
    regions, truth, original, prototypes = _scenes(300, rng, two_share=0.3)
    held_regions, held_truth, held_original, _ = _scenes(300, rng, two_share=0.3, prototypes=prototypes)
    names = [f"c{i}" for i in range(4)]
    settings = RelabelSettings(confidence="naive", rule="learned", keep_original=False, seed=0)
    history = run_rounds([r[:1] for r in regions], original, names, settings, rounds=2,
                         holdout=Holdout([r[:1] for r in held_regions], held_truth, held_original))
    ours = set_metrics(multi_hot(best_round(history).labels, 4), truth)
    keep = set_metrics(multi_hot([[o] for o in original], 4), truth)
    assert best_round(history).round >= 1 and ours["f1"] > keep["f1"] + 0.03, (ours, keep)
    assert 0.05 <= history[1].metrics["learned_threshold"] <= 0.95
    with pytest.raises(ValueError, match="--label learned needs held-out labeled images"):
        run_rounds([r[:1] for r in regions], original, names, settings, rounds=1)


def test_the_balanced_threshold_is_where_held_out_precision_and_recall_meet():
    # two images: A has {0} and a confusable absent class 1 at 0.7; B has {0, 1}, class 1 at 0.4
    proba, truth = np.array([[0.9, 0.7], [0.9, 0.4], [0.9, 0.4]]), np.array([[True, False], [True, True], [True, True]])
    # below 0.4: P 5/6, R 1 (min 0.833); 0.4-0.7: P 5/6, R 2/3; above 0.7: P 1, R 2/3: the first region wins
    threshold, how = learned.choose_threshold(proba, truth, None, None, by="balanced")
    assert threshold < 0.4 and "balanced (0.833 / 1.000)" in how
    with pytest.raises(ValueError, match="unknown threshold choice 'median'"):
        learned.choose_threshold(proba, truth, None, None, by="median")
