"""``LabelSet``: the one in-memory form every label format is read into and written from.

A LabelSet lists N images (by name, and by file path and/or pixel array), their complementary
labels as an (N, R) int array padded with -1, and their true labels as (N,) with -1 for unknown.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np


class LabelSetError(ValueError):
    """Labels and images do not fit together (lengths, class indices out of range, missing images)."""


@dataclass
class LabelSet:
    """Images with complementary and/or true labels over ``class_names``.

    ``names``: one identifier per image (file name or relative path). ``cl_labels``: (N, R) int64,
    -1 = no label in that slot. ``ord_labels``: (N,) int64, -1 = unknown. ``images``: optional
    uint8 (N, H, W) or (N, H, W, C). ``paths``: optional image files. ``features``: optional (N, D).
    ``true_labels``: (N,) ground truth when it differs from ``ord_labels`` (ordinary labels read from a
    label file over a labelled folder: train on ``ord_labels``, validate on ``true_labels``); None means
    ``ord_labels`` are the truth. ``vlm_labels``: (N,) ordinary labels read from a second label file
    (``--ordinary-labels``, -1 = none): trained on by the ordinary term only, never read as truth.
    """

    class_names: list[str]
    names: list[str]
    cl_labels: np.ndarray
    ord_labels: np.ndarray
    images: np.ndarray | None = None
    paths: list[Path] | None = None
    features: np.ndarray | None = None
    true_labels: np.ndarray | None = None
    vlm_labels: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.names)
        self.cl_labels = np.asarray(self.cl_labels, dtype=np.int64).reshape(n, -1)
        self.ord_labels = np.asarray(self.ord_labels, dtype=np.int64).reshape(n)
        if self.true_labels is not None:
            self.true_labels = np.asarray(self.true_labels, dtype=np.int64).reshape(n)
        if self.vlm_labels is not None:
            self.vlm_labels = np.asarray(self.vlm_labels, dtype=np.int64).reshape(n)
        K = len(self.class_names)
        checked = [("cl_labels", self.cl_labels), ("ord_labels", self.ord_labels), ("true_labels", self.truth)]
        if self.vlm_labels is not None:
            checked.append(("vlm_labels", self.vlm_labels))
        for what, values in checked:
            bad = np.argwhere((values < -1) | (values >= K))
            if len(bad):
                row = int(bad[0][0])
                raise LabelSetError(f"{what} of row {row} ({self.names[row]}) is {values.reshape(n, -1)[row]}, "
                                    f"outside 0..{K - 1} for {K} classes")
        for what, values in (("images", self.images), ("paths", self.paths), ("features", self.features)):
            if values is not None and len(values) != n:
                raise LabelSetError(f"{what} has {len(values)} entries but there are {n} names")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_true_labels(self) -> bool:
        return bool((self.ord_labels >= 0).any())

    @property
    def truth(self) -> np.ndarray:
        """Return (N,) the ground truth: ``true_labels`` when set, else ``ord_labels`` (-1 = unknown)."""
        return self.ord_labels if self.true_labels is None else self.true_labels

    @property
    def has_cls(self) -> bool:
        return bool((self.cl_labels >= 0).any())

    def subset(self, index) -> "LabelSet":
        """Return a LabelSet of the rows in ``index`` (array of ints or boolean mask)."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return replace(
            self, names=[self.names[i] for i in index], cl_labels=self.cl_labels[index],
            ord_labels=self.ord_labels[index],
            images=None if self.images is None else self.images[index],
            paths=None if self.paths is None else [self.paths[i] for i in index],
            features=None if self.features is None else self.features[index],
            true_labels=None if self.true_labels is None else self.true_labels[index],
            vlm_labels=None if self.vlm_labels is None else self.vlm_labels[index], meta=dict(self.meta))

    def keep_cls(self, num_cl: int | None) -> "LabelSet":
        """Return a copy keeping the first ``num_cl`` CL columns (all when None or 0)."""
        if not num_cl or num_cl >= self.cl_labels.shape[1]:
            return self
        return replace(self, cl_labels=self.cl_labels[:, :num_cl])


def merge_repeated_cls(cl_labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Return (CL rows with each class kept once per image, first occurrence first; number of repeats dropped).

    The one rule for an image given the same complementary label twice: a class is ruled out or it
    is not, so it counts once, in every loss, metric and export that reads CL sets.
    """
    rows = [list(dict.fromkeys(int(c) for c in row if c >= 0)) for row in np.asarray(cl_labels)]
    merged = pad_rows(rows) if len(rows) else np.asarray(cl_labels)
    dropped = int((np.asarray(cl_labels) >= 0).sum() - (merged >= 0).sum())
    if merged.shape[1] < np.asarray(cl_labels).shape[1]:  # keep the width, so --num-cl columns stay comparable
        merged = np.pad(merged, ((0, 0), (0, np.asarray(cl_labels).shape[1] - merged.shape[1])), constant_values=-1)
    return merged, dropped


def pad_rows(rows: list[list[int]]) -> np.ndarray:
    """Return the ragged ``rows`` as an (N, max_len) int64 array padded with -1 (at least 1 column)."""
    width = max([len(row) for row in rows] + [1])
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def majority_vote(labels: np.ndarray) -> np.ndarray:
    """Return (N,) the most frequent non-negative label per row (ties -> earliest column), -1 if none."""
    out = np.full(len(labels), -1, dtype=np.int64)
    for i, row in enumerate(np.asarray(labels).reshape(len(labels), -1)):
        row = row[row >= 0]
        if len(row):
            values, first, counts = np.unique(row, return_index=True, return_counts=True)
            best = counts == counts.max()
            out[i] = values[best][np.argmin(first[best])]
    return out


def split_indices(n: int, valid_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (train, valid) index arrays: a seeded random ``valid_split`` fraction (at least 1 row) held out."""
    order = np.random.default_rng(seed).permutation(n)
    n_valid = max(1, int(round(n * valid_split))) if valid_split > 0 and n > 1 else 0
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])
