"""labelers.audit on hand-made embeddings whose wrong labels are known."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from labelers.audit import VOTE_SMOOTHING, AuditError, find_label_errors, neighbour_vote

K = 5
NAMES = [f"class{k}" for k in range(K)]


def clusters(per_class=40, dim=16, spread=1.0, seed=0):
    """Return (L2-normalised features, true labels): one Gaussian blob per class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(K, dim)) * 3
    labels = np.repeat(np.arange(K), per_class)
    x = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def flip(labels, count, seed=1):
    """Return (noisy labels, flipped indices): `count` labels moved to another class."""
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    index = rng.choice(len(labels), count, replace=False)
    noisy[index] = (labels[index] + rng.integers(1, K, count)) % K
    return noisy, index


def test_flipped_labels_rank_first_and_get_their_true_class_suggested():
    x, truth = clusters()
    noisy, flipped = flip(truth, 20)
    result = find_label_errors(x, noisy, NAMES)
    wrong = noisy != truth
    assert roc_auc_score(wrong, -result.quality) > 0.97
    assert set(result.ranking()[:15]) <= set(flipped)
    assert (result.suggested[flipped] == truth[flipped]).mean() >= 0.9
    precision = (result.flagged & wrong).sum() / result.flagged.sum()
    recall = (result.flagged & wrong).sum() / wrong.sum()
    assert precision >= 0.8 and recall >= 0.8
    assert result.judged.all() and result.folds == 5 and not result.notes


def test_a_random_ranking_scores_near_chance_on_the_same_data():
    """The AUROC bar above is not met by any ranking: a random one sits near 0.5."""
    x, truth = clusters()
    noisy, _ = flip(truth, 20)
    random_scores = np.random.default_rng(5).random(len(noisy))
    assert abs(roc_auc_score(noisy != truth, random_scores) - 0.5) < 0.15


def test_neighbour_vote_matches_a_hand_count():
    # Two tight pairs on the unit circle: each point's one nearest other point is its partner.
    angles = np.array([0.0, 0.1, 2.0, 2.1])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([0, 1, 1, 1])
    vote = neighbour_vote(x, labels, n_classes=2, neighbours=1)
    s = VOTE_SMOOTHING
    # Point 0's partner (1) says class 1; point 1's partner (0) says class 0; points 2, 3 say class 1.
    expected = np.array([[s, 1 + s], [1 + s, s], [s, 1 + s], [s, 1 + s]]) / (1 + 2 * s)
    np.testing.assert_allclose(vote, expected)


def test_the_item_itself_never_votes():
    x, truth = clusters(per_class=10)
    noisy, flipped = flip(truth, 5)
    vote = neighbour_vote(x, noisy, K, neighbours=3)
    # A lone wrong label inside a clean blob gets (almost) no support from its neighbours.
    assert (vote[flipped, noisy[flipped]] <= (1 + VOTE_SMOOTHING) / (3 + K * VOTE_SMOOTHING)).all()


def test_multi_label_flips_rank_first():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(K, 24)) * 3
    truth = (rng.random((300, K)) < 0.3).astype(int)
    truth[truth.sum(axis=1) == 0, 0] = 1
    x = truth @ centres + 0.5 * rng.normal(size=(300, 24))
    noisy = truth.copy()
    flipped = rng.choice(300, 20, replace=False)
    noisy[flipped, rng.integers(0, K, 20)] ^= 1  # one class added or removed
    result = find_label_errors(x, noisy, NAMES, multi_label=True)
    wrong = (noisy != truth).any(axis=1)
    assert roc_auc_score(wrong, -result.quality) > 0.9
    assert result.suggested.shape == (300, K)
    assert (result.suggested[flipped] == truth[flipped]).all(axis=1).mean() >= 0.8
    assert result.flagged[flipped].mean() >= 0.6


# ---------------------------------------------------------------- bad input
def test_one_class_is_refused():
    x, _ = clusters(per_class=10)
    with pytest.raises(AuditError, match="at least two classes"):
        find_label_errors(x, np.zeros(len(x), int), ["only"])


def test_a_class_with_one_annotation_is_not_judged_and_said_so():
    x, truth = clusters(per_class=20)
    labels = truth.copy()
    labels[labels == 4] = 3
    labels[0] = 4  # class4 now has a single annotation
    result = find_label_errors(x, labels, NAMES)
    assert not result.judged[0] and np.isnan(result.quality[0]) and not result.flagged[0]
    assert result.suggested[0] == -1 and result.judged[1:].all()
    assert (result.suggested[result.judged] != 4).all()  # never suggested: the audit knows nothing of it
    assert any("cannot judge" in note and "'class4' (1)" in note for note in result.notes)


def test_fewer_annotations_than_folds_reduces_the_folds_with_a_warning():
    x, truth = clusters(per_class=3)
    with pytest.warns(UserWarning, match="only 3 annotations, fewer than the 5 folds"):
        result = find_label_errors(x, truth, NAMES, folds=5)
    assert result.folds == 3 and result.judged.all()
    assert any("using 3 folds" in note for note in result.notes)


def test_labels_outside_the_class_list_are_refused_naming_the_item():
    x, truth = clusters(per_class=10)
    labels = truth.copy()
    labels[7] = K
    with pytest.raises(AuditError, match=r"item 7 has label 5, not in the 5 classes"):
        find_label_errors(x, labels, NAMES)


def test_unlabelled_items_are_left_unjudged():
    x, truth = clusters(per_class=10)
    labels = truth.copy()
    labels[:3] = -1
    result = find_label_errors(x, labels, NAMES)
    assert not result.judged[:3].any() and result.judged[3:].all()
    assert "3 items have no label" in " ".join(result.notes)


def test_only_one_judgeable_class_is_refused():
    x, _ = clusters(per_class=10)
    labels = np.zeros(len(x), int)
    labels[0] = 1
    with pytest.raises(AuditError, match="two classes with 2\\+ annotations"):
        find_label_errors(x, labels, NAMES[:2])


def test_features_that_do_not_fit_are_refused():
    x, truth = clusters(per_class=10)
    with pytest.raises(AuditError, match="one row per label"):
        find_label_errors(x[:-1], truth, NAMES)
    x[3, 0] = np.nan
    with pytest.raises(AuditError, match="NaN"):
        find_label_errors(x, truth, NAMES)
