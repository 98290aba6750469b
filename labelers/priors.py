"""A prior over a project's labels computed from another classifier: source classes summed into labels.

An image embedder may end in a classifier over a fixed source label space (EfficientNet-Lite0: the 1000
ImageNet classes). An aggregation matrix A (K labels x C source classes; column c says which label class c
belongs to, all zeros for a class that belongs to none) turns its probabilities q (N, C) into zero-shot
label probabilities:

    p_k = sum_c A[k, c] q_c                     for a label with source classes ("matched"),
    p_j = (1 - sum_k p_k) / U                   for each of the U labels without any,

so an unmatched label shares the mass of the source classes that belong to no label (a deer photo, which has
no ImageNet class, lands on antelopes; that mass goes to "deer" rather than to "dog"). With no unmatched
label, the matched masses are renormalised; with no matched label, p is uniform.
"""
from __future__ import annotations

import numpy as np
import torch

# The smallest probability a prior may give: log-probabilities stay finite for the head's offset.
FLOOR = 1e-6


def label_probabilities(source_probs: np.ndarray, aggregation: np.ndarray) -> np.ndarray:
    """Return zero-shot label probabilities (N, K) from source probabilities (N, C) and A (K, C) (see module doc).

    Raises ValueError when the shapes disagree or a column of A sums to more than 1.
    """
    q, a = np.asarray(source_probs, np.float64), np.asarray(aggregation, np.float64)
    if q.ndim != 2 or a.ndim != 2 or q.shape[1] != a.shape[1]:
        raise ValueError(f"source probabilities {q.shape} and aggregation {a.shape} do not match (N, C), (K, C)")
    if (a.sum(axis=0) > 1 + 1e-6).any():
        raise ValueError("each source class may belong to at most one label in total (columns of A sum to <= 1)")
    mass = q @ a.T
    unmatched = a.sum(axis=1) == 0
    if unmatched.all():
        return np.full(mass.shape, 1.0 / len(a))
    if unmatched.any():
        rest = np.clip(1.0 - mass.sum(axis=1, keepdims=True), 0.0, None)
        mass[:, unmatched] = rest / unmatched.sum()
    else:
        mass = mass / np.clip(mass.sum(axis=1, keepdims=True), 1e-300, None)
    return mass


class ClassifierPrior:
    """Zero-shot label probabilities from a linear source classifier on the embedder's features.

    `weight` (C, D) and `bias` (C) are the source classifier; it saw un-normalised features, the embedder
    hands out unit vectors, so features are multiplied by `feature_scale` (the typical norm) first.
    `label_names`: the K labels, in the head's order; `aggregation`: A (K, C).
    """

    def __init__(self, label_names, weight, bias, aggregation, feature_scale: float = 1.0, source: str = ""):
        self.label_names = list(label_names)
        self.weight = np.asarray(weight, np.float32)
        self.bias = np.asarray(bias, np.float32)
        self.aggregation = np.asarray(aggregation, np.float32)
        self.feature_scale, self.source = float(feature_scale), source
        if self.aggregation.shape != (len(self.label_names), len(self.weight)) or self.bias.shape != (len(self.weight),):
            raise ValueError(f"prior shapes disagree: {len(self.label_names)} labels, weight {self.weight.shape}, "
                             f"bias {self.bias.shape}, aggregation {self.aggregation.shape}")

    @property
    def matched(self) -> list[str]:
        """The labels that have source classes, so get an informed prior (the others share the rest)."""
        return [name for name, row in zip(self.label_names, self.aggregation) if row.any()]

    def source_logits(self, features: np.ndarray) -> np.ndarray:
        """Return the source classifier's logits (N, C) for unit-norm features (N, D)."""
        x = np.asarray(features, np.float32) * self.feature_scale
        if x.ndim != 2 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"features {x.shape} do not fit the prior's classifier (D = {self.weight.shape[1]})")
        return x @ self.weight.T + self.bias

    def proba(self, features: np.ndarray) -> np.ndarray:
        """Return zero-shot label probabilities (N, K) for features (N, D), each at least FLOOR."""
        logits = self.source_logits(features).astype(np.float64)
        q = np.exp(logits - logits.max(axis=1, keepdims=True))
        q /= q.sum(axis=1, keepdims=True)
        return np.clip(label_probabilities(q, self.aggregation), FLOOR, 1.0)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Return the prior as named tensors (for safetensors); `meta()` holds the rest."""
        return {"weight": torch.from_numpy(self.weight), "bias": torch.from_numpy(self.bias),
                "aggregation": torch.from_numpy(self.aggregation)}

    def meta(self) -> dict:
        return {"label_names": self.label_names, "feature_scale": self.feature_scale, "source": self.source}

    @classmethod
    def from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "ClassifierPrior":
        """Rebuild a prior from `tensors()` and `meta()`."""
        return cls(meta["label_names"], tensors["weight"].numpy(), tensors["bias"].numpy(),
                   tensors["aggregation"].numpy(), meta["feature_scale"], meta.get("source", ""))
