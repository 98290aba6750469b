"""Estimating the transition matrix T without the full truth: from a few gold labels, or from none.

Two estimators, both returning a (K, K) float64 matrix whose rows sum to 1:

- ``shrunk``: gold (true label, CL) counts shrunk toward a prior matrix, T[y] = (counts[y] + a * prior[y]) /
  (n_y + a) (the posterior mean under a Dirichlet(a * prior[y]) prior). A class with few gold CLs stays
  near the prior, one with many follows its counts. The strength ``a`` and the prior (uniform, or the
  CL marginal of every training image, which needs no gold) are chosen by k-fold cross-validated
  log-likelihood of held-out gold CLs: only the gold labels choose them.
- ``from_predictions``: no gold at all. Anchor images (those a model trained on the CLs predicts as
  class y most confidently) stand in for gold images of y; their CLs give T[y]. ``refine="em"`` then
  treats the true label as hidden and runs EM: q_i(y) ~ p_i(y) * prod_r T[y, cl_ir], T[y, j] ~ sum_i
  q_i(y) * count_i(j).

Each CL is one answer: an image whose CL is the same class in two rounds counts it twice (the rounds are
independent answers; see docs/trainers.md, "Repeated CLs").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainers.matrices import TransitionMatrixError, uniform

# Dirichlet strengths (pseudo-CLs per row) the cross-validation chooses from; 0 is the raw empirical matrix.
STRENGTHS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 2000.0, 1e5)
FOLDS = 5
LOG_FLOOR = 1e-9  # a held-out CL in a zero cell scores log(1e-9), not -inf: the raw matrix can still be compared


@dataclass
class Shrinkage:
    """What ``shrunk`` chose: the prior's name, the strength, and each candidate's held-out log-likelihood."""

    prior: str
    strength: float
    scores: dict[tuple[str, float], float]
    gold_images: int


def cl_counts(true_labels: np.ndarray, cl_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Return (K, K) counts of (true label, CL) over rows with a known true label (repeats count each time)."""
    true_labels = np.asarray(true_labels)
    cl_labels = np.asarray(cl_labels).reshape(len(true_labels), -1)
    rows, cols = np.nonzero((cl_labels >= 0) & (true_labels[:, None] >= 0))
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (true_labels[rows], cl_labels[rows, cols]), 1)
    return counts


def marginal_prior(cl_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Return (K, K): every row the CL marginal of all images, with its own class removed and renormalised.

    Needs no true label: a labeler that names "truck" for most images names it for most classes.
    """
    cl = np.asarray(cl_labels)
    freq = np.bincount(cl[cl >= 0], minlength=num_classes).astype(np.float64) + 1.0  # +1: no zero column
    prior = np.tile(freq, (num_classes, 1))
    np.fill_diagonal(prior, 0.0)
    return prior / prior.sum(axis=1, keepdims=True)


def dirichlet_mean(counts: np.ndarray, prior: np.ndarray, strength: float) -> np.ndarray:
    """Return (counts + strength * prior) / (row total + strength); an empty row with strength 0 is the prior."""
    totals = counts.sum(axis=1, keepdims=True)
    mixed = counts + strength * prior
    denom = totals + strength
    return np.where(denom > 0, mixed / np.maximum(denom, 1e-300), prior)


def _held_out_loglik(true_labels, cl_labels, K, priors: dict[str, np.ndarray], strengths, folds, seed):
    """Return {(prior, strength): mean held-out log-likelihood per gold CL} over ``folds`` image folds."""
    gold = np.flatnonzero(true_labels >= 0)
    fold_of = np.empty(len(true_labels), dtype=np.int64)
    fold_of[np.random.default_rng(seed).permutation(gold)] = np.arange(len(gold)) % folds
    scores = {(name, a): 0.0 for name in priors for a in strengths}
    total = 0
    for fold in range(folds):
        held = gold[fold_of[gold] == fold]
        fit = gold[fold_of[gold] != fold]
        counts = cl_counts(true_labels[fit], cl_labels[fit], K)
        test = cl_counts(true_labels[held], cl_labels[held], K)
        total += test.sum()
        for name, prior in priors.items():
            for a in strengths:
                T = dirichlet_mean(counts, prior, a)
                scores[(name, a)] += float((test * np.log(np.maximum(T, LOG_FLOOR))).sum())
    return {key: value / max(total, 1) for key, value in scores.items()}


def shrunk(true_labels: np.ndarray, cl_labels: np.ndarray, num_classes: int, strength: float | None = None,
           prior: str | None = None, all_cl_labels: np.ndarray | None = None, folds: int = FOLDS,
           seed: int = 0) -> tuple[np.ndarray, Shrinkage]:
    """Return (T, Shrinkage): gold counts shrunk toward a prior, strength and prior chosen on held-out gold CLs.

    ``true_labels`` (N,) with -1 for unknown, ``cl_labels`` (N, R) padded with -1: the gold rows are those
    with a true label. ``strength`` fixes the Dirichlet strength (pseudo-CLs per row) instead of choosing it;
    ``prior`` fixes "uniform" or "marginal" (the CL marginal of ``all_cl_labels``, default ``cl_labels``).
    Raises TransitionMatrixError without gold labels, or when the cross-validation needs more gold
    images than ``folds``.
    """
    true_labels = np.asarray(true_labels)
    cl_labels = np.asarray(cl_labels).reshape(len(true_labels), -1)
    gold = int((true_labels >= 0).sum())
    if gold == 0:
        raise TransitionMatrixError("a shrunk transition matrix needs gold (true) labels; none are known")
    priors = {"uniform": uniform(num_classes),
              "marginal": marginal_prior(cl_labels if all_cl_labels is None else all_cl_labels, num_classes)}
    if prior is not None:
        if prior not in priors:
            raise TransitionMatrixError(f"unknown shrinkage prior {prior!r}; use uniform or marginal")
        priors = {prior: priors[prior]}
    strengths = STRENGTHS if strength is None else (float(strength),)
    if strength is not None and strength < 0:
        raise TransitionMatrixError(f"shrinkage strength must be >= 0, got {strength}")
    scores: dict = {}
    if len(priors) * len(strengths) > 1:
        if gold < folds:
            raise TransitionMatrixError(f"choosing the shrinkage needs at least {folds} gold images, got {gold}; "
                                        "pass a fixed strength (shrunk:<strength>)")
        scores = _held_out_loglik(true_labels, cl_labels, num_classes, priors, strengths, folds, seed)
        best = max(scores, key=scores.get)
    else:
        best = (next(iter(priors)), strengths[0])
    counts = cl_counts(true_labels, cl_labels, num_classes)
    T = dirichlet_mean(counts, priors[best[0]], best[1])
    return T, Shrinkage(best[0], best[1], scores, gold)


def anchor_matrix(probs: np.ndarray, cl_labels: np.ndarray, num_classes: int, fraction: float = 0.2,
                  smoothing: float = 1.0) -> np.ndarray:
    """Return T estimated from anchor images: per class y, the CLs of the ``fraction`` most confident y-images.

    ``probs`` (N, K) are a model's predicted class probabilities; an image is a y-candidate when its
    argmax is y, and the anchors are the top ``fraction`` of them by p_y (at least one). The CL counts of
    the anchors get ``smoothing`` pseudo-counts per off-diagonal cell, so no entry is exactly 0. A class
    the model never predicts keeps a uniform row. Raises TransitionMatrixError on mismatched shapes.
    """
    probs = np.asarray(probs, dtype=np.float64)
    cl_labels = np.asarray(cl_labels).reshape(len(probs), -1)
    if probs.shape != (len(cl_labels), num_classes):
        raise TransitionMatrixError(f"predictions have shape {probs.shape}, expected ({len(cl_labels)}, "
                                    f"{num_classes})")
    if not 0 < fraction <= 1:
        raise TransitionMatrixError(f"anchor fraction must be in (0, 1], got {fraction}")
    predicted = probs.argmax(axis=1)
    pseudo = np.full(len(probs), -1, dtype=np.int64)
    for y in range(num_classes):
        members = np.flatnonzero(predicted == y)
        if len(members):
            top = members[np.argsort(-probs[members, y])[:max(1, int(round(fraction * len(members))))]]
            pseudo[top] = y
    counts = cl_counts(pseudo, cl_labels, num_classes)
    return dirichlet_mean(counts, uniform(num_classes), smoothing * (num_classes - 1))


def em_matrix(probs: np.ndarray, cl_labels: np.ndarray, start: np.ndarray, iterations: int = 50,
              smoothing: float = 1.0, tol: float = 1e-6) -> np.ndarray:
    """Return T maximising the CLs' likelihood sum_i log sum_y p_i(y) prod_r T[y, cl_ir], by EM from ``start``.

    ``probs`` (N, K) act as each image's prior over its hidden true label; ``start`` is the first T. The
    M-step adds ``smoothing`` pseudo-counts per off-diagonal cell (a uniform Dirichlet prior), so a
    class no image is assigned to keeps a near-uniform row. Stops after ``iterations`` or when no entry
    moves more than ``tol``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    cl = np.asarray(cl_labels).reshape(len(probs), -1)
    K = probs.shape[1]
    counts = np.zeros((len(probs), K))
    rows, cols = np.nonzero(cl >= 0)
    np.add.at(counts, (rows, cl[rows, cols]), 1)  # (N, K) how often each class is a CL of image i
    prior = uniform(K)
    T = np.asarray(start, dtype=np.float64)
    log_p = np.log(np.maximum(probs, 1e-12))
    for _ in range(iterations):
        log_q = log_p + counts @ np.log(np.maximum(T, 1e-12)).T  # (N, K): log p_i(y) + sum_r log T[y, cl_ir]
        q = np.exp(log_q - log_q.max(axis=1, keepdims=True))
        q /= q.sum(axis=1, keepdims=True)
        new = dirichlet_mean(q.T @ counts, prior, smoothing * (K - 1))
        done = np.abs(new - T).max() < tol
        T = new
        if done:
            break
    return T


def from_predictions(probs: np.ndarray, cl_labels: np.ndarray, num_classes: int, refine: str = "anchor",
                     fraction: float = 0.2) -> np.ndarray:
    """Return T from a model's predictions and the CLs alone: anchors (``refine="anchor"``), then EM (``"em"``).

    Raises TransitionMatrixError for an unknown ``refine``.
    """
    T = anchor_matrix(probs, cl_labels, num_classes, fraction)
    if refine == "anchor":
        return T
    if refine == "em":
        return em_matrix(probs, cl_labels, T)
    raise TransitionMatrixError(f"unknown refinement {refine!r}; use anchor or em")


def distance(estimate: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Return the Frobenius distance and the mean row KL(truth || estimate) between two matrices."""
    estimate, truth = np.asarray(estimate, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    mask = truth > 0
    kl = np.where(mask, truth * (np.log(np.where(mask, truth, 1)) - np.log(np.maximum(estimate, 1e-12))), 0.0)
    return {"frobenius": float(np.linalg.norm(estimate - truth)), "kl": float(kl.sum(axis=1).mean())}
