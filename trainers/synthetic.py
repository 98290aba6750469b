"""Synthetic complementary labels drawn from a transition matrix (the libcll benchmark settings)."""
from __future__ import annotations

from math import comb

import numpy as np


def draw_complementary_labels(true_labels: np.ndarray, T: np.ndarray, num_cl: int = 1,
                              seed: int = 0) -> np.ndarray:
    """Return (N, R) CLs: for each row, ``num_cl`` distinct classes drawn with probability ~ T[y].

    With ``num_cl=0`` each row first draws its own count s in 1..K-1 with P(s) ~ C(K-1, s) (the
    "multiple CL" setting); rows are padded with -1 to the largest count. Raises ValueError when a
    row of T has fewer than ``num_cl`` non-zero entries or a true label is unknown (-1).
    """
    true_labels = np.asarray(true_labels, dtype=np.int64)
    if (true_labels < 0).any():
        raise ValueError(f"row {int(np.argmax(true_labels < 0))} has no true label to draw CLs from")
    K = T.shape[0]
    rng = np.random.default_rng(seed)
    if num_cl == 0:
        weights = np.array([comb(K - 1, s) for s in range(1, K)], dtype=np.float64)
        counts = rng.choice(np.arange(1, K), size=len(true_labels), p=weights / weights.sum())
    else:
        counts = np.full(len(true_labels), num_cl)
    possible = np.count_nonzero(T[true_labels] > 0, axis=1)
    short = np.flatnonzero(possible < counts)
    if len(short):
        row = int(short[0])
        raise ValueError(f"row {int(true_labels[row])} of the transition matrix has fewer than "
                         f"{int(counts[row])} possible CLs")
    # Gumbel top-k: the k largest log(w) + Gumbel noise are a weighted draw without replacement.
    with np.errstate(divide="ignore"):
        keys = np.log(T[true_labels]) + rng.gumbel(size=(len(true_labels), K))
    order = np.argsort(-keys, axis=1)
    width = int(counts.max(initial=1))
    out = order[:, :width].astype(np.int64)
    out[np.arange(width)[None, :] >= counts[:, None]] = -1
    return out
