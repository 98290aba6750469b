"""A prior over a project's labels computed from another classifier: its source classes pooled into labels.

An image embedder may end in a classifier over a fixed source label space (EfficientNet-Lite0: the 1000
ImageNet classes). An aggregation matrix A (K labels x C source classes; A[k, c] > 0 when class c belongs to
label k, a column of zeros for a class of no label) turns its probabilities q (N, C) into zero-shot label
probabilities. For a label k with source classes, and U labels without any:

    r_k = sum_c A[k, c] q_c / sum_c A[k, c]       (the mean over the label's classes)
    p_k = (1 - U/K) r_k / sum_(matched j) r_j
    p_j = 1/K                                     for each label without classes: it keeps the uniform prior.

Why the mean and not the sum: the source classifier was trained on balanced classes, so q_c is proportional
to the likelihood p(x | c); a label whose classes are equally likely has p(x | k) = the mean over them, and
with equally likely labels p(k | x) is proportional to that. The sum favours labels with many classes ("dog":
118) whenever the classifier is unsure, which on small upsampled images it nearly always is (on CIFAR-10 the
sum is far less accurate, benchmarks/bench_zero_shot_prior.py).
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
    k = len(a)
    size = a.sum(axis=1)
    matched = size > 0
    out = np.full((len(q), k), 1.0 / k)
    if matched.any():
        mean = (q @ a[matched].T) / size[matched]
        share = matched.sum() / k  # what the matched labels hold together; the others keep 1/K each
        out[:, matched] = share * mean / np.clip(mean.sum(axis=1, keepdims=True), 1e-300, None)
    return out


class ClassifierPrior:
    """Zero-shot label probabilities from a linear source classifier on the embedder's features.

    `weight` (C, D) and `bias` (C) are the source classifier; it saw un-normalised features, the embedder
    hands out unit vectors, so features are multiplied by `feature_scale` (the typical norm) first.
    `label_names`: the K labels, in the head's order; `aggregation`: A (K, C). `source` and `details`
    ({label: text}) say where the prior comes from, for logs and /health.
    """

    def __init__(self, label_names, weight, bias, aggregation, feature_scale: float = 1.0, source: str = "",
                 details: dict[str, str] | None = None):
        self.label_names = list(label_names)
        self.weight = np.asarray(weight, np.float32)
        self.bias = np.asarray(bias, np.float32)
        self.aggregation = np.asarray(aggregation, np.float32)
        self.feature_scale, self.source, self.details = float(feature_scale), source, dict(details or {})
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
        """Return zero-shot label probabilities (N, K) for features (N, D), each at least FLOOR.

        Equal to `label_probabilities(softmax(source_logits(features)), aggregation)` (clipped at FLOOR): the
        softmax is taken over the source classes some label uses, since its normaliser cancels."""
        x = np.asarray(features, np.float32) * self.feature_scale
        if x.ndim != 2 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"features {x.shape} do not fit the prior's classifier (D = {self.weight.shape[1]})")
        # Only the source classes some label pools matter: the softmax normaliser over all C classes cancels in
        # `label_probabilities` (it divides by the sum over matched labels). CIFAR-10's labels use ~1/4 of
        # ImageNet's classes, and this product is most of a /predict. Sliced per call (the slices cost little
        # next to the product), so the arrays may be changed in place.
        used = np.flatnonzero(self.aggregation.any(axis=0))
        if not used.size:  # no label has source classes: every label keeps the uniform prior
            return np.full((len(x), len(self.label_names)), 1.0 / len(self.label_names))
        logits = (x @ self.weight[used].T + self.bias[used]).astype(np.float64)
        q = np.exp(logits - logits.max(axis=1, keepdims=True))  # unnormalised: the sum cancels
        return np.clip(label_probabilities(q, self.aggregation[:, used]), FLOOR, 1.0)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Return the prior as named tensors (for safetensors); `meta()` holds the rest."""
        return {"weight": torch.from_numpy(self.weight), "bias": torch.from_numpy(self.bias),
                "aggregation": torch.from_numpy(self.aggregation)}

    def meta(self) -> dict:
        return {"label_names": self.label_names, "feature_scale": self.feature_scale, "source": self.source,
                "details": self.details}

    @classmethod
    def from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "ClassifierPrior":
        """Rebuild a prior from `tensors()` and `meta()`."""
        return cls(meta["label_names"], tensors["weight"].numpy(), tensors["bias"].numpy(),
                   tensors["aggregation"].numpy(), meta["feature_scale"], meta.get("source", ""),
                   meta.get("details"))
