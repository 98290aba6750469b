"""Score a whole unlabeled pool fast: chunked float32 matmul, softmax and top-2, never a full sort.

This is what lets the backend answer a Retrieve Predictions over many thousands of tasks from cached
embeddings in well under Label Studio's 100 s limit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .head import ClassifierHead
from .strategies import STRATEGIES, _seeded_uniform, gaussian_key, prediction_score


@dataclass
class PoolScores:
    """Per item: predicted class, its probability, the exported score and the uncertainty."""

    predicted: np.ndarray
    confidence: np.ndarray
    score: np.ndarray
    uncertainty: np.ndarray


def score_pool(head: ClassifierHead, features: np.ndarray, strategy: str, keys: Sequence | None = None,
               seed: int = 0, chunk_size: int = 65536) -> PoolScores:
    """Return PoolScores for (N, D) features under `strategy` (single-label heads only).

    Equal to `prediction_score(head.predict_proba(features), strategy)` up to float32 rounding.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if head.multi_label:
        raise ValueError("score_pool serves single-label heads; use predict_proba for multi-label")
    n = len(features)
    predicted, confidence = np.empty(n, np.int64), np.empty(n, np.float32)
    score, uncertainty = np.empty(n, np.float64), np.empty(n, np.float64)
    head._ensure_init(features.shape[1])
    weight_t, bias = head.weight.T.contiguous(), head.bias
    log_k = float(np.log(head.n_classes))
    with torch.inference_mode():
        for start in range(0, n, chunk_size):
            x = torch.from_numpy(np.ascontiguousarray(features[start:start + chunk_size], dtype=np.float32))
            logits = torch.addmm(bias, x, weight_t) / head.temperature
            log_p = torch.log_softmax(logits, dim=1)
            top2, top_idx = log_p.topk(2, dim=1)
            p1, p2 = top2[:, 0].exp(), top2[:, 1].exp()
            end = start + len(x)
            predicted[start:end], confidence[start:end] = top_idx[:, 0].numpy(), p1.numpy()
            if strategy == "least":
                chunk_score = p1
            elif strategy in ("margin", "gaussian"):  # gaussian: the margin here, its key after the loop
                chunk_score = p1 - p2
            elif strategy == "entropy":
                entropy = -(log_p.exp() * log_p).sum(dim=1)
                chunk_score = (1.0 - entropy / log_k).clamp(0.0, 1.0)
                uncertainty[start:end] = entropy.numpy()
            else:
                continue
            score[start:end] = chunk_score.numpy()
    if strategy == "random":
        score = prediction_score(np.zeros((n, 2)), "random", keys=keys, seed=seed)
    if strategy == "gaussian":
        score = 1.0 - gaussian_key(score, _seeded_uniform(n, keys, seed))
    if strategy != "entropy":
        uncertainty = 1.0 - score
    return PoolScores(predicted, confidence, score, uncertainty)
