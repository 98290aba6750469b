"""Label sets against a multi-label truth, per image then averaged (the ImageNet-ReaL protocol).

For predicted set P and true set R of one image: Jaccard |P&R|/|P|R|, precision |P&R|/|P|, recall
|P&R|/|R|, F1 their harmonic mean (0 when both are 0). Images whose true set is empty are unscored, as in
ReaL. An empty predicted set has precision 0.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _as_bool(matrix) -> np.ndarray:
    return np.asarray(matrix, bool)


def set_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Return mean Jaccard, precision, recall, F1 over scored images, label cardinality of the predictions
    (mean set size over scored images), and the counts. Inputs are (N, K) multi-hot; raises ValueError
    when their shapes differ or no image is scored."""
    p, r = _as_bool(predicted), _as_bool(truth)
    if p.shape != r.shape:
        raise ValueError(f"predicted labels {p.shape} and truth {r.shape} differ in shape")
    scored = r.any(axis=1)
    if not scored.any():
        raise ValueError("no image has a non-empty true label set")
    p, r = p[scored], r[scored]
    inter = (p & r).sum(axis=1).astype(float)
    union = (p | r).sum(axis=1)
    size_p, size_r = p.sum(axis=1), r.sum(axis=1)
    precision = np.divide(inter, size_p, out=np.zeros_like(inter), where=size_p > 0)
    recall = inter / size_r
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(inter), where=denom > 0)
    return {"jaccard": float((inter / union).mean()), "precision": float(precision.mean()),
            "recall": float(recall.mean()), "f1": float(f1.mean()), "cardinality": float(size_p.mean()),
            "truth_cardinality": float(size_r.mean()), "scored": int(scored.sum()), "unscored": int((~scored).sum())}


def real_top1(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Return the ReaL-style top-1 accuracy: the share of scored images whose most probable class is in
    their true set."""
    return real_accuracy(np.asarray(probabilities).argmax(axis=1), truth)["top1"]


def real_accuracy(top1: np.ndarray, truth: np.ndarray) -> dict:
    """Return {"top1", "scored", "unscored"}: the share of scored images (non-empty true set, as in ReaL)
    whose predicted class `top1` (N,) is in their true set (N, K). Raises ValueError when the lengths differ,
    a class is out of range, or no image is scored."""
    r, top1 = _as_bool(truth), np.asarray(top1, np.int64)
    if len(top1) != len(r):
        raise ValueError(f"{len(top1)} predictions for {len(r)} true label sets")
    bad = np.flatnonzero((top1 < 0) | (top1 >= r.shape[1]))
    if len(bad):
        raise ValueError(f"row {bad[0]}: predicted class {top1[bad[0]]} is not in [0, {r.shape[1]})")
    scored = r.any(axis=1)
    if not scored.any():
        raise ValueError("no image has a non-empty true label set")
    hits = r[np.flatnonzero(scored), top1[scored]]
    return {"top1": float(hits.mean()), "scored": int(scored.sum()), "unscored": int((~scored).sum())}


def multi_hot(label_lists: Sequence[Sequence[int]], n_classes: int) -> np.ndarray:
    """Return the (N, K) boolean matrix of index lists; raises ValueError naming the row of a bad index."""
    out = np.zeros((len(label_lists), n_classes), bool)
    for row, labels in enumerate(label_lists):
        for index in labels:
            if not isinstance(index, (int, np.integer)) or not 0 <= index < n_classes:
                raise ValueError(f"row {row}: label {index!r} is not a class index in [0, {n_classes})")
            out[row, index] = True
    return out


def to_lists(matrix: np.ndarray) -> list[list[int]]:
    """Return the sorted index list of each row of a multi-hot matrix."""
    return [np.flatnonzero(row).tolist() for row in _as_bool(matrix)]
