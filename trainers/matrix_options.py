"""The --transition-matrix option: a name, ``noisy:<lambda>``, ``shrunk:<a>`` or a file, turned into a matrix.

Kept apart from trainers.matrices (the matrices themselves) and trainers.matrix_estimation (estimators that
build on them), so that neither imports the other's dependants.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trainers.matrices import (FROM_PREDICTIONS, MATRIX_NAMES, MatrixInfo, TransitionMatrixError, empirical, load,
                               noisy, strong, uniform, weak)
from trainers.matrix_estimation import shrunk


def _shrunk(true_labels, cl_labels, num_classes, arg: str, seed: int, all_true: bool):
    try:
        strength = float(arg) if arg else None
    except ValueError:
        raise TransitionMatrixError(f"shrunk:<strength> needs a number, got {arg!r}") from None
    # shrunk:<a> is the fixed, hand-set form: a uniform prior, nothing chosen on the gold labels
    matrix, chosen = shrunk(true_labels, cl_labels, num_classes, strength=strength,
                            prior=None if strength is None else "uniform", seed=seed)
    source = f"shrunk toward {chosen.prior} (strength {chosen.strength:g}"
    source += ", fixed)" if strength is not None else ", chosen on held-out gold CLs)"
    return matrix, MatrixInfo(source, gold_labels=chosen.gold_images, oracle=all_true)


def resolve(spec: str, num_classes: int, seed: int = 0, true_labels: np.ndarray | None = None,
            cl_labels: np.ndarray | None = None, all_true: bool = False) -> tuple[np.ndarray, MatrixInfo]:
    """Return (matrix, info) for ``spec``: a name in MATRIX_NAMES, ``noisy:<lambda>``, ``shrunk:<a>``, or a file.

    ``anchor`` and ``em`` return the uniform starting matrix (trainers.train estimates the rest).
    ``empirical`` and ``shrunk`` need ``true_labels``/``cl_labels`` of the training split; ``all_true`` says whether
    every training row carries its true label, in which case the estimate is flagged as an oracle.
    """
    name, _, arg = spec.partition(":")
    if name == "uniform":
        return uniform(num_classes), MatrixInfo("uniform")
    if name == "weak":
        return weak(num_classes, seed), MatrixInfo(f"weak (seed {seed})")
    if name == "strong":
        return strong(num_classes, seed), MatrixInfo(f"strong (seed {seed})")
    if name == "noisy":
        noise = float(arg) if arg else 0.1
        return noisy(num_classes, noise, seed), MatrixInfo(f"noisy lambda={noise} (seed {seed})")
    if name in ("empirical", "shrunk"):
        if true_labels is None or cl_labels is None:
            raise TransitionMatrixError(f"an {name} transition matrix needs labeled training data")
        if name == "empirical":
            matrix, used = empirical(true_labels, cl_labels, num_classes)
            return matrix, MatrixInfo("empirical", gold_labels=used, oracle=all_true)
        return _shrunk(true_labels, cl_labels, num_classes, arg, seed, all_true)
    if name in FROM_PREDICTIONS:
        return uniform(num_classes), MatrixInfo(f"{name} (from the model's predictions, no gold)")
    if Path(spec).suffix in (".npy", ".csv", ".txt"):
        return load(spec, num_classes), MatrixInfo(f"file {spec}")
    raise TransitionMatrixError(f"unknown transition matrix {spec!r}; use one of {', '.join(MATRIX_NAMES)}, "
                                "noisy:<lambda>, shrunk:<strength>, or a .npy/.csv file")
