"""Transition matrices T with T[y, j] = P(complementary label j | true label y).

Rows sum to 1. The diagonal is 0 when complementary labels are noise-free. Every generator
returns a float64 numpy array; callers move it to the model's device as a tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Off-diagonal values of the biased settings (K = 10): a seeded permutation of these per row.
WEAK_VALUES = (0.15, 0.15, 0.15, 0.10, 0.10, 0.10, 1 / 12, 1 / 12, 1 / 12)
STRONG_VALUES = (0.25, 0.25, 0.25, 0.08, 0.08, 0.08, 0.0033, 0.0033, 0.0033)
MATRIX_NAMES = ("uniform", "weak", "strong", "noisy", "empirical", "shrunk", "anchor", "em")
# Estimated from a model's predictions during training (trainers.train), starting from the uniform matrix.
FROM_PREDICTIONS = ("anchor", "em")


class TransitionMatrixError(ValueError):
    """A transition matrix is malformed (shape, negative entries, rows not summing to 1)."""


@dataclass
class MatrixInfo:
    """Where a matrix came from: ``source`` (name or file), gold labels used, and whether it is an oracle."""

    source: str
    gold_labels: int | None = None
    oracle: bool = False

    def describe(self) -> str:
        """Return a one-line human description, e.g. ``empirical from 500 gold labels (estimate)``."""
        text = self.source
        if self.gold_labels is not None:
            text += f" from {self.gold_labels} gold labels"
        if not self.oracle:
            return text
        if self.gold_labels is not None:
            return text + " (ORACLE: estimated from every true training label)"
        return text + " (ORACLE)"


def uniform(num_classes: int) -> np.ndarray:
    """Return (J - I) / (K - 1); raises TransitionMatrixError if K < 2."""
    if num_classes < 2:
        raise TransitionMatrixError(f"need at least 2 classes, got {num_classes}")
    return (np.ones((num_classes, num_classes)) - np.eye(num_classes)) / (num_classes - 1)


def _biased(values: tuple[float, ...], num_classes: int, seed: int, name: str) -> np.ndarray:
    if num_classes != len(values) + 1:
        raise TransitionMatrixError(f"the {name!r} matrix is defined for {len(values) + 1} classes only, "
                                    f"got {num_classes}; give a matrix file instead")
    rng = np.random.default_rng(seed)
    matrix = np.zeros((num_classes, num_classes))
    for row in range(num_classes):
        others = [j for j in range(num_classes) if j != row]
        matrix[row, others] = rng.permutation(np.asarray(values))
    return matrix / matrix.sum(axis=1, keepdims=True)  # strong's values sum to 0.9999


def weak(num_classes: int = 10, seed: int = 0) -> np.ndarray:
    """Return the mildly biased K=10 matrix (off-diagonals 0.15/0.10/0.0833, seeded per-row order)."""
    return _biased(WEAK_VALUES, num_classes, seed, "weak")


def strong(num_classes: int = 10, seed: int = 0) -> np.ndarray:
    """Return the strongly biased K=10 matrix (off-diagonals 0.25/0.08/0.0033, renormalised)."""
    return _biased(STRONG_VALUES, num_classes, seed, "strong")


def noisy(num_classes: int = 10, noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """Return (1 - noise) * strong + noise * J / K: the true label is a CL with probability noise / K."""
    if not 0.0 <= noise <= 1.0:
        raise TransitionMatrixError(f"noise must be in [0, 1], got {noise}")
    return (1 - noise) * strong(num_classes, seed) + noise * np.full((num_classes, num_classes), 1 / num_classes)


def empirical(true_labels: np.ndarray, cl_labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, int]:
    """Return (T_hat, gold_count): row-normalised counts of (true label, CL) over rows with a true label.

    ``true_labels`` is (N,) with -1 for unknown; ``cl_labels`` is (N, R) with -1 padding. Only rows
    whose true label is known count; ``gold_count`` is how many such rows were used. A class without
    any gold row gets a uniform row (and is reported in the error message only if no gold rows exist).
    Raises TransitionMatrixError when there is no gold label at all.
    """
    true_labels = np.asarray(true_labels)
    cl_labels = np.asarray(cl_labels).reshape(len(true_labels), -1)
    gold = true_labels >= 0
    if not gold.any():
        raise TransitionMatrixError("an empirical transition matrix needs gold (true) labels; none are known")
    counts = np.zeros((num_classes, num_classes))
    for y, row in zip(true_labels[gold], cl_labels[gold]):
        for j in row[row >= 0]:
            counts[y, j] += 1
    totals = counts.sum(axis=1, keepdims=True)
    fallback = uniform(num_classes)
    matrix = np.where(totals > 0, counts / np.maximum(totals, 1), fallback)
    return matrix, int(gold.sum())


def validate(matrix: np.ndarray, num_classes: int, source: str = "matrix", atol: float = 1e-3) -> np.ndarray:
    """Return ``matrix`` as float64 (K, K) with rows renormalised; raise TransitionMatrixError naming ``source``.

    Fails on a wrong shape, negative or non-finite entries, or rows whose sum is off by more than ``atol``.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (num_classes, num_classes):
        raise TransitionMatrixError(f"{source}: transition matrix has shape {matrix.shape}, "
                                    f"expected ({num_classes}, {num_classes}) for {num_classes} classes")
    if not np.isfinite(matrix).all() or (matrix < 0).any():
        raise TransitionMatrixError(f"{source}: transition matrix has negative or non-finite entries")
    sums = matrix.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > atol)
    if len(bad):
        raise TransitionMatrixError(f"{source}: row {int(bad[0])} of the transition matrix sums to "
                                    f"{sums[bad[0]]:.4f}, expected 1")
    return matrix / sums[:, None]


def load(path: str | Path, num_classes: int) -> np.ndarray:
    """Return the validated matrix stored in ``path`` (.npy, or .csv / .txt of comma-separated rows).

    Raises FileNotFoundError if missing and TransitionMatrixError for an unknown suffix or bad content.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"transition matrix file not found: {path}")
    if path.suffix == ".npy":
        matrix = np.load(path, allow_pickle=False)
    elif path.suffix in (".csv", ".txt"):
        try:
            matrix = np.loadtxt(path, delimiter=",", ndmin=2)
        except ValueError as err:
            raise TransitionMatrixError(f"{path}: not a numeric comma-separated matrix ({err})") from None
    else:
        raise TransitionMatrixError(f"{path}: unknown matrix file type {path.suffix!r}; use .npy or .csv")
    return validate(matrix, num_classes, str(path))


def save(matrix: np.ndarray, path: str | Path) -> Path:
    """Write ``matrix`` to ``path`` (.npy binary or .csv text by suffix) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, np.asarray(matrix, dtype=np.float64))
    elif path.suffix in (".csv", ".txt"):
        np.savetxt(path, np.asarray(matrix), delimiter=",", fmt="%.10g")
    else:
        raise TransitionMatrixError(f"{path}: unknown matrix file type {path.suffix!r}; use .npy or .csv")
    return path
