"""Which classes an image gets, from its regions' class probabilities.

An image's score for a class is the highest probability any of its regions gives that class: every class of
every region counts, not only each region's argmax (the seed's rule). Then one of three rules turns scores
into a label set: a global threshold, per-class thresholds calibrated for a target precision on held-out
labeled data, or a per-class two-component Gaussian mixture. The original label is then kept or dropped.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

RULES = ("threshold", "per-class", "gmm", "learned", "argmax")  # argmax: the seed's rule, for comparison
GMM_MIN_SAMPLES = 50  # fewer scores than this: a 2-component fit is noise, use the threshold instead


def image_scores(region_confidences: Sequence[np.ndarray]) -> np.ndarray:
    """Return (images, K): per image, the max over its regions (R_i, K) of each class's confidence."""
    if not region_confidences:
        raise ValueError("no images to score")
    return np.stack([np.asarray(c).max(axis=0) for c in region_confidences])


def threshold_labels(scores: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """Return the boolean (N, K) label matrix: score > threshold (a scalar or one per class)."""
    return np.asarray(scores) > np.asarray(threshold)


def calibrate_thresholds(scores: np.ndarray, truth: np.ndarray, target_precision: float = 0.9,
                         fallback: float = 0.5, min_positives: int = 3, exclude: np.ndarray | None = None
                         ) -> np.ndarray:
    """Return per-class thresholds (K,): the lowest one whose held-out precision is >= target_precision.

    `scores` (N, K) are held-out confidences and `truth` (N, K) their multi-hot labels. `exclude` (N, K)
    bool leaves entries out of the count: with the original label kept, the entries of the images' original
    classes, so the target is the precision of the labels *added* beside the original (the original is
    there anyway; counting its easy hits would let a class reach "0.9" while its added labels are mostly
    wrong). A class with fewer than `min_positives` true (counted) examples, or whose precision never reaches
    the target, gets `fallback`, and the classes concerned are named in a warning."""
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth, bool)
    if scores.shape != truth.shape:
        raise ValueError(f"scores {scores.shape} and truth {truth.shape} differ in shape")
    counted = np.ones(truth.shape, bool) if exclude is None else ~np.asarray(exclude, bool)
    thresholds = np.full(scores.shape[1], float(fallback))
    fell_back = []
    for k in range(scores.shape[1]):
        rows = np.flatnonzero(counted[:, k])
        if truth[rows, k].sum() < min_positives:
            fell_back.append(k)
            continue
        order = rows[np.argsort(-scores[rows, k], kind="stable")]
        hits = np.cumsum(truth[order, k])
        precision = hits / np.arange(1, len(order) + 1)
        # accepting the top j+1 scores means threshold just below score j; ties must be accepted together
        sorted_scores = scores[order, k]
        last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
        ok = np.nonzero((precision >= target_precision) & last_of_tie)[0]
        if not len(ok):
            fell_back.append(k)
            continue
        j = ok[-1]  # the most accepted while still precise enough
        below = sorted_scores[j + 1] if j + 1 < len(order) else sorted_scores[j] - 1e-6
        thresholds[k] = (sorted_scores[j] + below) / 2  # strictly between the last accepted and the next
    if fell_back:
        log.warning("per-class thresholds: classes %s have too few held-out positives or never reach precision "
                    "%.2f; they use the fallback threshold %.2f", fell_back, target_precision, fallback)
    return thresholds


def gmm_labels(scores: np.ndarray, fallback: float = 0.5, min_samples: int = GMM_MIN_SAMPLES,
               seed: int = 0) -> np.ndarray:
    """Return boolean (N, K): per class, a 2-component 1-D Gaussian mixture on that class's scores across
    images; an image gets the class when the posterior of the higher-mean component is > 0.5.

    With fewer than `min_samples` images the mixture is not fitted and `fallback` is used as a threshold,
    with a warning."""
    from sklearn.mixture import GaussianMixture

    scores = np.asarray(scores, np.float64)
    if len(scores) < min_samples:
        log.warning("gmm labeling: only %d images (< %d); using the threshold %.2f instead",
                    len(scores), min_samples, fallback)
        return scores > fallback
    labels = np.zeros(scores.shape, bool)
    for k in range(scores.shape[1]):
        column = scores[:, [k]]
        if np.ptp(column) < 1e-9:  # one value: nothing to separate
            labels[:, k] = column[:, 0] > fallback
            continue
        gmm = GaussianMixture(2, random_state=seed).fit(column)
        high = int(np.argmax(gmm.means_[:, 0]))
        labels[:, k] = gmm.predict_proba(column)[:, high] > 0.5
        # a mixture can put a low-variance high component below a wide low one at the extremes; confidence
        # that is higher than an accepted image's must be accepted too (monotone in the score)
        if labels[:, k].any():
            labels[:, k] |= column[:, 0] >= column[labels[:, k], 0].min()
    return labels


def apply_original(labels: np.ndarray, original: np.ndarray, keep_original: bool = True) -> np.ndarray:
    """Return labels (N, K) with each image's original class index (N,) added (keep) or left as predicted.

    Dropping the original lets a wrong single label be replaced; an image whose rule picks nothing then
    keeps its original label, since an empty label set is never what the data means."""
    labels = np.array(labels, bool)
    rows = np.arange(len(labels))
    original = np.asarray(original, np.int64)
    if keep_original:
        labels[rows, original] = True
    else:
        empty = ~labels.any(axis=1)
        labels[rows[empty], original[empty]] = True
    return labels


def argmax_union(region_confidences: Sequence[np.ndarray], threshold: float | None) -> np.ndarray:
    """Return boolean (N, K): the seed's rule. Each region adds its argmax class when that class's
    confidence is > threshold (None: always, the seed's `naive`); an image gets the union over its regions."""
    k = np.asarray(region_confidences[0]).shape[1]
    labels = np.zeros((len(region_confidences), k), bool)
    for i, confidences in enumerate(region_confidences):
        confidences = np.asarray(confidences)
        top = confidences.argmax(axis=1)
        keep = np.ones(len(top), bool) if threshold is None else confidences[np.arange(len(top)), top] > threshold
        labels[i, top[keep]] = True
    return labels


def label_images(scores: np.ndarray, original: np.ndarray, rule: str = "threshold", threshold: float = 0.5,
                 thresholds: np.ndarray | None = None, keep_original: bool = True) -> np.ndarray:
    """Return the boolean (N, K) label sets by `rule` (threshold, per-class with `thresholds`, gmm)."""
    if rule == "threshold":
        labels = threshold_labels(scores, threshold)
    elif rule == "per-class":
        if thresholds is None:
            raise ValueError("per-class labeling needs thresholds calibrated on held-out labeled data")
        labels = threshold_labels(scores, thresholds)
    elif rule == "gmm":
        labels = gmm_labels(scores, fallback=threshold)
    else:
        raise ValueError(f"unknown labeling rule {rule!r}; choose from {', '.join(RULES)}")
    return apply_original(labels, original, keep_original)


def replacement_candidates(scores: np.ndarray, original: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (top class (N,), margin (N,), candidate (N,) bool) of the replace rule: the image's highest-scoring
    class, its score minus the original class's score, and whether the top class differs from the original."""
    scores, original = np.asarray(scores, np.float64), np.asarray(original, np.int64)
    top = scores.argmax(axis=1)
    rows = np.arange(len(scores))
    return top, scores[rows, top] - scores[rows, original], top != original


def calibrate_replacements(scores: np.ndarray, truth: np.ndarray, original: np.ndarray, target_precision: float,
                           min_positives: int = 5) -> np.ndarray:
    """Return per-class margins (K,): swap an image's original label for its top class c when the top class's
    score minus the original's is > margins[c].

    Calibrated on held-out images (`scores` (N, K), multi-hot `truth` (N, K), the given single label
    `original` (N,)): a swap counts as right only when c is in the truth and the original is not (a swap of a
    right original for another right class gains nothing and a wrong one loses it); per class, the lowest
    margin whose swaps reach `target_precision`. A class with fewer than `min_positives` right swaps among its
    candidates uses the margin calibrated on all classes pooled; where even that never reaches the target,
    the margin is 2.0 (above any difference of probabilities: no swap), named in a warning."""
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth, bool)
    original = np.asarray(original, np.int64)
    if scores.shape != truth.shape or len(original) != len(scores):
        raise ValueError(f"scores {scores.shape}, truth {truth.shape} and original ({len(original)},) do not match")
    top, margin, candidate = replacement_candidates(scores, original)
    rows = np.arange(len(scores))
    right = truth[rows, top] & ~truth[rows, original]
    if not candidate.any():
        log.warning("replace rule: no held-out image has a top class other than its original; no swaps")
        return np.full(scores.shape[1], 2.0)
    pooled = calibrate_thresholds(margin[candidate, None], right[candidate, None], target_precision, fallback=2.0,
                                  min_positives=min_positives)[0]
    # one column per class holding the margins of the candidates whose top class it is; the rest left out
    per_class = np.zeros(scores.shape)
    per_class[rows, top] = margin
    is_right = np.zeros(scores.shape, bool)
    is_right[rows, top] = right
    counted = np.zeros(scores.shape, bool)
    counted[rows[candidate], top[candidate]] = True
    return calibrate_thresholds(per_class, is_right, target_precision, fallback=pooled, min_positives=min_positives,
                                exclude=~counted)


def apply_replacements(labels: np.ndarray, scores: np.ndarray, original: np.ndarray, margins: np.ndarray
                       ) -> np.ndarray:
    """Return labels (N, K) with the original class removed and the top class set on images whose top class
    differs from the original by a margin > margins[top] (`calibrate_replacements`)."""
    labels = np.array(labels, bool)
    top, margin, candidate = replacement_candidates(scores, original)
    swap = np.flatnonzero(candidate & (margin > np.asarray(margins)[top]))
    labels[swap, np.asarray(original, np.int64)[swap]] = False
    labels[swap, top[swap]] = True
    return labels
