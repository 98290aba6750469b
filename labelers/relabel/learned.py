"""The learned labeling rule: held-out labeled images teach which (image, class) scores mean "present".

Per-class thresholds look at one number per class. What tells a second object, a wrong given label or a
confusion apart is how a class's score sits among the image's others: is it the image's top class, how far
below the top, how confident the head is in the given label. The learned rule fits a logistic regression
(scikit-learn) on held-out images with a multi-label truth, over one row per (image, class):

    the class's score, its gap to the image's top score, the top and second scores, the given label's score,
    whether the class is the given label, the image's top or second class, and the class itself

(scores as log-odds), and gives a class when its probability of being present is above a threshold. The
given label is one of the candidates: a confidently wrong one is dropped (unless the original is kept), and
an image always gets at least its most probable class. The threshold is chosen on the same held-out images
through cross-fitted probabilities: the highest one whose recall reaches `target_recall`, else the one with
the best F1 or (by="balanced") where precision and recall meet.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .metrics import set_metrics

log = logging.getLogger(__name__)

THRESHOLDS = np.round(np.linspace(0.05, 0.95, 91), 3)  # the grid the threshold is chosen on
MIN_IMAGES = 50  # fewer held-out images than this: a logistic regression over K*N rows is not worth fitting


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def pair_features(scores: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Return (N * K, F) rows, image-major: the features of every (image, class) pair of image scores
    (N, K) and given labels (N,) (see the module docstring)."""
    scores = np.asarray(scores, np.float64)
    n, k = scores.shape
    rows = np.arange(n)
    logits = _logit(scores)
    ranked = np.sort(logits, axis=1)
    top, second = ranked[:, -1:], ranked[:, -2:-1] if k > 1 else ranked[:, -1:]
    rank = (-logits).argsort(axis=1, kind="stable").argsort(axis=1, kind="stable")
    is_given = np.zeros((n, k))
    is_given[rows, np.asarray(original, np.int64)] = 1.0
    given = logits[rows, np.asarray(original, np.int64)][:, None]
    columns = [logits, logits - top, np.broadcast_to(top, (n, k)), np.broadcast_to(second, (n, k)),
               np.broadcast_to(given, (n, k)), is_given, (rank == 0).astype(float), (rank == 1).astype(float)]
    features = np.stack(columns, axis=-1)
    classes = np.broadcast_to(np.eye(k), (n, k, k))
    return np.concatenate([features, classes], axis=-1).reshape(n * k, -1)


def decide(proba: np.ndarray, threshold: float, original: np.ndarray | None = None) -> np.ndarray:
    """Return boolean (N, K): the classes whose probability is > threshold, at least the most probable one per
    image, plus the given label (N,) when `original` is passed (the original kept)."""
    labels = np.asarray(proba) > threshold
    rows = np.arange(len(labels))
    empty = ~labels.any(axis=1)
    labels[rows[empty], np.asarray(proba)[empty].argmax(axis=1)] = True
    if original is not None:
        labels[rows, np.asarray(original, np.int64)] = True
    return labels


@dataclass
class LearnedRule:
    """A fitted learned rule: the model, its threshold and how the threshold was chosen (for the log)."""

    model: object
    threshold: float
    chosen_by: str

    def proba(self, scores: np.ndarray, original: np.ndarray) -> np.ndarray:
        """Return (N, K): the probability that each class is present in each image."""
        n, k = np.asarray(scores).shape
        return self.model.predict_proba(pair_features(scores, original))[:, 1].reshape(n, k)

    def labels(self, scores: np.ndarray, original: np.ndarray, keep_original: bool) -> np.ndarray:
        """Return boolean (N, K) label sets of images with these scores and given labels."""
        return decide(self.proba(scores, original), self.threshold, original if keep_original else None)


def _model(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))


def _cross_fitted(scores, original, truth, seed) -> np.ndarray:
    """Return (N, K) probabilities, each image's from a model fitted on the other half (even / odd rows)."""
    n, k = scores.shape
    proba = np.zeros((n, k))
    for half in (0, 1):
        fit_on, score_on = np.arange(1 - half, n, 2), np.arange(half, n, 2)
        model = _model(seed).fit(pair_features(scores[fit_on], original[fit_on]), truth[fit_on].reshape(-1))
        proba[score_on] = model.predict_proba(pair_features(scores[score_on], original[score_on]))[:, 1].reshape(-1, k)
    return proba


CHOICES = ("f1", "balanced")  # how the threshold is chosen without a target recall


def choose_threshold(proba: np.ndarray, truth: np.ndarray, original: np.ndarray | None,
                     target_recall: float | None, by: str = "f1") -> tuple[float, str]:
    """Return (threshold, how it was chosen) on held-out probabilities (N, K) and truth (N, K): the highest
    threshold of THRESHOLDS whose recall is >= target_recall; without a target (or when none reaches it, with
    a warning), by `by`: "f1", the best F1, or "balanced", the best min(precision, recall) (the threshold
    where the two meet: per-image F1 is flat around its best, so its arg max wanders with the sample, while
    the meeting point does not)."""
    if by not in CHOICES:
        raise ValueError(f"unknown threshold choice {by!r}; choose from {', '.join(CHOICES)}")
    results = [set_metrics(decide(proba, t, original), truth) for t in THRESHOLDS]
    if target_recall is not None:
        reaching = [t for t, m in zip(THRESHOLDS, results) if m["recall"] >= target_recall]
        if reaching:
            return float(max(reaching)), f"held-out recall >= {target_recall}"
        log.warning("learned rule: no threshold reaches held-out recall %.3f (best %.3f); using the best-F1 one",
                    target_recall, max(m["recall"] for m in results))
    if by == "balanced":
        best = int(np.argmax([min(m["precision"], m["recall"]) for m in results]))
        return float(THRESHOLDS[best]), (f"held-out precision and recall balanced ({results[best]['precision']:.3f} "
                                         f"/ {results[best]['recall']:.3f})")
    best = int(np.argmax([m["f1"] for m in results]))
    return float(THRESHOLDS[best]), f"best held-out F1 ({results[best]['f1']:.3f})"


def fit_learned_rule(scores: np.ndarray, original: np.ndarray, truth: np.ndarray, keep_original: bool = False,
                     target_recall: float | None = None, seed: int = 0, by: str = "balanced") -> LearnedRule:
    """Return the learned rule fitted on held-out image scores (N, K), their given labels (N,) and their
    multi-label truth (N, K) bool (images with an empty true set are left out).

    Raises ValueError when the shapes differ, with fewer than MIN_IMAGES scored images, or when every image
    has every class (nothing to learn from)."""
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth, bool)
    original = np.asarray(original, np.int64)
    if scores.shape != truth.shape or len(original) != len(scores):
        raise ValueError(f"scores {scores.shape}, truth {truth.shape} and original ({len(original)},) do not match")
    scored = truth.any(axis=1)  # an empty true set is unscored (ReaL): it says nothing about what is present
    scores, original, truth = scores[scored], original[scored], truth[scored]
    if len(scores) < MIN_IMAGES:
        raise ValueError(f"the learned rule needs at least {MIN_IMAGES} held-out images, got {len(scores)}")
    if truth.all():
        raise ValueError("every held-out image has every class: nothing to learn from")
    proba = _cross_fitted(scores, original, truth, seed)
    threshold, chosen_by = choose_threshold(proba, truth, original if keep_original else None, target_recall, by)
    model = _model(seed).fit(pair_features(scores, original), truth.reshape(-1))
    log.info("learned rule: threshold %.2f (%s) from %d held-out images", threshold, chosen_by, len(scores))
    return LearnedRule(model, threshold, chosen_by)
