"""Score a whole unlabeled pool fast: one float32 GEMM per block of rows, then softmax and top-2 on that block
while it is still in cache, never a full sort and never a second pass over the pool.

How close this gets to the machine's limit (one float32 GEMM of the same shape, same threads) is measured by
benchmarks/bench_speed.py. What it saves over a straightforward version:
- the temperature is folded into the weights once (no extra pass dividing the logits);
- the logits of a block go into one preallocated buffer (2048 rows x K classes float32: ~0.8 MB at K = 100,
  inside L2), and the softmax runs in place on it: exp (shifted by the row maximum only when a maximum is
  large enough to overflow), sum;
- the top-2 needs no sort and no log-softmax: p1 = e_max / sum, and p2 is the largest remaining exp / sum
  once the maximum's entry is zeroed;
- the arg max comes from NumPy's SIMD `argmax` along each row and the maximum from gathering it (torch's
  `max(dim=1)` with indices over rows of ~100 classes is the slowest pass of all).
Threads: the GEMM and the element-wise passes use torch's intra-op threads (`torch.get_num_threads()`).

Pools past memory: `score_blocks` takes any iterable of feature blocks, e.g. `EmbeddingCache.iter_blocks`
reading the embedding cache block by block; the result is the same as scoring the whole matrix.

This is what lets the backend answer a Retrieve Predictions over many thousands of tasks from cached
embeddings in well under Label Studio's 100 s limit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from .head import ClassifierHead
from .strategies import STRATEGIES, _seeded_uniform, gaussian_key, prediction_score

BLOCK_ROWS = 2048  # logits of a block stay in L2 while the softmax and top-2 passes run over them
SAFE_LOGIT = 60.0  # |row maximum| below this: exp needs no shift (e^60 x 1e5 classes < float32's 3.4e38)


@dataclass
class PoolScores:
    """Per item: predicted class, its probability, the exported score and the uncertainty."""

    predicted: np.ndarray
    confidence: np.ndarray
    score: np.ndarray
    uncertainty: np.ndarray


def score_pool(head: ClassifierHead, features: np.ndarray, strategy: str, keys: Sequence | None = None,
               seed: int = 0, block_rows: int = BLOCK_ROWS) -> PoolScores:
    """Return PoolScores for (N, D) features under `strategy` (single-label heads only).

    Equal to `prediction_score(head.predict_proba(features), strategy)` up to float32 rounding. Raises
    ValueError for an unknown strategy, a multi-label head or features of the wrong width.
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"score_pool needs an (N, D) feature matrix, got shape {features.shape}")
    blocks = (features[start:start + block_rows] for start in range(0, len(features), block_rows))
    return score_blocks(head, blocks, len(features), strategy, keys=keys, seed=seed, block_rows=block_rows)


def score_blocks(head: ClassifierHead, blocks: Iterable[np.ndarray], n: int, strategy: str,
                 keys: Sequence | None = None, seed: int = 0, block_rows: int = BLOCK_ROWS) -> PoolScores:
    """Return PoolScores for a pool given as consecutive feature blocks (each (rows, D), rows summing to `n`).

    The same result as `score_pool` on the concatenated blocks; only the blocks the iterable holds at once (with
    `EmbeddingCache.iter_blocks`: the current one and the one read ahead) are in memory.
    Raises ValueError as `score_pool` does, and when the blocks hold more or fewer than `n` rows.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if head.multi_label:
        raise ValueError("score_pool serves single-label heads; use predict_proba for multi-label")
    out = PoolScores(np.empty(n, np.int64), np.empty(n, np.float32), np.empty(n, np.float64),
                     np.empty(n, np.float64))
    scorer = None
    start = 0
    for block in blocks:
        if scorer is None:
            scorer = _BlockScorer(head, np.asarray(block).shape[1], strategy, block_rows)
        for offset in range(0, len(block), block_rows):  # a caller's block may be larger than ours
            part = block[offset:offset + block_rows]
            end = start + len(part)
            if end > n:
                raise ValueError(f"the feature blocks hold more than the {n} rows announced")
            scorer.score(part, out, start, end)
            start = end
    if start != n:
        raise ValueError(f"the feature blocks held {start} rows, {n} were announced")
    if strategy == "random":
        out.score = prediction_score(np.zeros((n, 2)), "random", keys=keys, seed=seed)
    if strategy == "gaussian":  # the margin so far; its key now that every row is known
        out.score = 1.0 - gaussian_key(out.score, _seeded_uniform(n, keys, seed))
    if strategy != "entropy":
        out.uncertainty = 1.0 - out.score
    return out


class _BlockScorer:
    """Scores one block of rows into slices of a PoolScores, reusing one logits buffer."""

    def __init__(self, head: ClassifierHead, dim: int, strategy: str, block_rows: int):
        head._ensure_init(dim)
        inverse_t = 1.0 / float(head.temperature)
        self.head, self.strategy = head, strategy
        # logits / T = x (W / T)^T + b / T: the temperature costs nothing per row.
        self.weight_t = (head.weight.float() * inverse_t).T.contiguous()
        self.bias = head.bias.float() * inverse_t
        self.prior_gain = head.prior_gain * inverse_t
        self.log_k = float(np.log(head.n_classes))
        self.logits = torch.empty(block_rows, head.n_classes)
        self.shifted = torch.empty(block_rows, head.n_classes) if strategy == "entropy" else None

    def score(self, block: np.ndarray, out: PoolScores, start: int, end: int) -> None:
        x = np.ascontiguousarray(block, dtype=np.float32)  # no copy for float32 C-ordered rows
        rows = len(x)
        with torch.inference_mode():
            logits = self.logits[:rows]
            torch.addmm(self.bias, torch.from_numpy(x), self.weight_t, out=logits)
            if self.head.prior is not None:  # the label-probability prior's logit offset, as head.logits adds
                logits.add_(torch.from_numpy(self.head._offset(x).astype(np.float32)), alpha=self.prior_gain)
            # The arg max by NumPy (SIMD along a row of K), the maximum by gathering it: torch's max(dim=1)
            # with indices over rows of ~100 classes costs twice both together (benchmarks/bench_speed.py).
            predicted = torch.from_numpy(np.argmax(logits.numpy(), axis=1))
            top = logits.gather(1, predicted[:, None])[:, 0]
            # Softmax numerators e = exp(l - s). The shift s = row maximum guards exp against overflow; while
            # every row's maximum is within +-SAFE_LOGIT (any sane head) s = 0 is as exact and saves a pass.
            shift = not (-SAFE_LOGIT < float(top.min()) and float(top.max()) < SAFE_LOGIT)
            if shift:
                logits.sub_(top[:, None])
            if self.shifted is not None:
                shifted = self.shifted[:rows]
                shifted.copy_(logits)
            exps = logits.exp_()  # in place
            total = exps.sum(dim=1)
            peak = torch.ones_like(top) if shift else top.exp()  # the largest numerator
            p1 = peak / total
            out.predicted[start:end], out.confidence[start:end] = predicted.numpy(), p1.numpy()
            if self.strategy == "least":
                out.score[start:end] = p1.numpy()
            elif self.strategy in ("margin", "gaussian"):
                second = exps.scatter_(1, predicted[:, None], 0.0).amax(dim=1)
                out.score[start:end] = ((peak - second) / total).numpy()
            elif self.strategy == "entropy":
                # H = log(sum e) - sum(e * (l - s)) / sum e, with e = exp(l - s)
                entropy = total.log() - (exps * shifted).sum(dim=1) / total
                out.uncertainty[start:end] = entropy.numpy()
                out.score[start:end] = (1.0 - entropy / self.log_k).clamp_(0.0, 1.0).numpy()
