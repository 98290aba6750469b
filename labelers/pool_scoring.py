"""Score a whole unlabeled pool fast: one float32 GEMM per block of rows, then softmax and top-2 on that block
while it is still in cache, never a full sort and never a second pass over the pool.

How close this gets to the machine's limit (one float32 GEMM of the same shape, same threads) is measured by
benchmarks/bench_speed.py. What it saves over a straightforward version:
- the temperature is folded into the weights once (no extra pass dividing the logits);
- the logits of a block go into one preallocated buffer sized to a core's L2 (`rows_in_l2`: LOGITS_BYTES,
  4096 rows x 100 classes float32 = 1.6 MB; 2048 rows cost 1-6% more per pool in side-by-side runs, the
  per-block calls made twice as often), and the softmax runs in place on it: exp (shifted by the row maximum only when a maximum is large
  enough to overflow), sum;
- the top-2 needs no sort and no log-softmax: p1 = e_max / sum, and p2 is the largest remaining exp / sum
  once the maximum's entry is zeroed (only margin and gaussian pay for it; least stops at p1);
- the arg max comes from NumPy's SIMD `argmax` along each row (written straight into the result) and the
  maximum from gathering it: torch's `max(dim=1)` with indices over rows of ~100 classes costs ~2.5x, and
  `topk(2)` ~13x, the arg max plus the zeroing and amax it replaces;
- per-row results go straight into the returned arrays (`out=`), no temporaries per block.
Not done, measured slower: torch.compile of the row reductions (its arg max is not vectorized: 3x slower than
these passes, and a 10 s compile), logsumexp or softmax instead of exp + sum (~3x), logits laid out
classes-first (the GEMM itself is 20% slower).

Threads (`threads`, default `torch.get_num_threads()`): with 1, everything runs on the calling thread. With
T > 1, T Python threads each take whole blocks and run torch on one thread (torch and NumPy release the GIL)
instead of torch's intra-op threads splitting every small pass after the GEMM: those passes are each a
parallel region ending in a barrier, NumPy's arg max is single-threaded anyway, and on a shared machine one
descheduled thread stalls every barrier (measured on the busy shared 2-core machine, 1M x 512, 100 classes:
2 worker threads 1.02x the 2-thread GEMM, the same blocks on 2 intra-op threads 9.9x; at 300k rows 0.9x vs
1.1x with the earlier 2048-row blocks). `torch.set_num_threads(1)` in a worker reaches threads started
meanwhile (and, with some OpenMP runtimes, the caller), so the caller's count is put back when scoring ends.

Pools past memory: `score_blocks` takes any iterable of feature blocks, e.g. `EmbeddingCache.iter_blocks`
reading the embedding cache block by block (memory-mapped views, no copy, when the pool is in stored order);
the result is the same as scoring the whole matrix.

This is what lets the backend answer a Retrieve Predictions over many thousands of tasks from cached
embeddings in well under Label Studio's 100 s limit.
"""
from __future__ import annotations

import copy
import itertools
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from .head import ClassifierHead
from .strategies import STRATEGIES, _seeded_uniform, gaussian_key, prediction_score

LOGITS_BYTES = 4096 * 100 * 4  # a block's logits (~1.6 MB) stay in a core's L2 (2 MB here) for the passes after the GEMM
SAFE_LOGIT = 60.0  # |row maximum| below this: exp needs no shift (e^60 x 1e5 classes < float32's 3.4e38)


@dataclass
class PoolScores:
    """Per item: predicted class, its probability, the exported score and the uncertainty."""

    predicted: np.ndarray
    confidence: np.ndarray
    score: np.ndarray
    uncertainty: np.ndarray


def score_pool(head: ClassifierHead, features: np.ndarray, strategy: str, keys: Sequence | None = None,
               seed: int = 0, block_rows: int | None = None, threads: int | None = None) -> PoolScores:
    """Return PoolScores for (N, D) features under `strategy` (single-label heads only).

    Equal to `prediction_score(head.predict_proba(features), strategy)` up to float32 rounding. `block_rows`
    defaults to `rows_in_l2(K)`, `threads` to `torch.get_num_threads()` (see the module docstring). Raises
    ValueError for an unknown strategy, a multi-label head, features of the wrong width, or threads < 1.
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"score_pool needs an (N, D) feature matrix, got shape {features.shape}")
    return score_blocks(head, [features], len(features), strategy, keys=keys, seed=seed, block_rows=block_rows,
                        threads=threads)


def rows_in_l2(classes: int) -> int:
    """Rows per block whose float32 logits fill LOGITS_BYTES (4096 at 100 classes), between 256 and 16384."""
    return int(min(16384, max(256, LOGITS_BYTES // (4 * classes))))


def score_blocks(head: ClassifierHead, blocks: Iterable[np.ndarray], n: int, strategy: str,
                 keys: Sequence | None = None, seed: int = 0, block_rows: int | None = None,
                 threads: int | None = None) -> PoolScores:
    """Return PoolScores for a pool given as consecutive feature blocks (each (rows, D), rows summing to `n`).

    The same result as `score_pool` on the concatenated blocks; only the blocks the iterable holds at once (with
    `EmbeddingCache.iter_blocks`: the current one and the one read ahead) are in memory.
    Raises ValueError as `score_pool` does, and when the blocks hold more or fewer than `n` rows.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if head.multi_label:
        raise ValueError("score_pool serves single-label heads; use predict_proba for multi-label")
    threads = torch.get_num_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"score_pool needs threads >= 1, got {threads}")
    block_rows = rows_in_l2(head.n_classes) if block_rows is None else int(block_rows)
    out = PoolScores(np.empty(n, np.int64), np.empty(n, np.float32), np.empty(n, np.float64),
                     np.empty(n, np.float64))
    parts = _numbered_parts(blocks, n, block_rows)
    if threads == 1:
        _score_parts(head, strategy, block_rows, parts, out)
    else:
        _score_parts_in_threads(head, strategy, block_rows, parts, out, threads)
    if strategy == "random":
        out.score = prediction_score(np.zeros((n, 2)), "random", keys=keys, seed=seed)
    if strategy == "gaussian":  # the margin so far; its key now that every row is known
        out.score = 1.0 - gaussian_key(out.score, _seeded_uniform(n, keys, seed))
    if strategy != "entropy":
        out.uncertainty = 1.0 - out.score
    return out


def _numbered_parts(blocks: Iterable[np.ndarray], n: int, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first row, part of at most `block_rows` rows) over the blocks; raise ValueError when they hold
    more or fewer than `n` rows."""
    start = 0
    for block in blocks:
        for offset in range(0, len(block), block_rows):  # a caller's block may be larger than ours
            part = block[offset:offset + block_rows]
            if start + len(part) > n:
                raise ValueError(f"the feature blocks hold more than the {n} rows announced")
            yield start, part
            start += len(part)
    if start != n:
        raise ValueError(f"the feature blocks held {start} rows, {n} were announced")


def _score_parts(head: ClassifierHead, strategy: str, block_rows: int, parts: Iterator, out: PoolScores) -> None:
    """Score every (start, part) of `parts` into `out` on the calling thread."""
    first = next(parts, None)
    if first is None:
        return
    scorer = _BlockScorer(head, np.asarray(first[1]).shape[1], strategy, block_rows)
    for start, part in itertools.chain([first], parts):
        scorer.score(part, out, start, start + len(part))


_THREAD_COUNT_LOCK = threading.Lock()


def _score_parts_in_threads(head: ClassifierHead, strategy: str, block_rows: int, parts: Iterator,
                            out: PoolScores, threads: int) -> None:
    """Score `parts` on `threads` Python threads, each taking the next part and running torch on one thread.

    Why not torch's intra-op threads: after the GEMM, each pass over a block is a small parallel region whose
    barrier waits for every thread, and NumPy's argmax runs on one thread anyway; on a busy machine one
    descheduled thread stalls them all. Whole blocks per thread keep every core busy (torch and NumPy release
    the GIL) with no barrier but the end. torch.set_num_threads(1) in a worker applies to that thread's
    OpenMP and MKL calls; the caller's count is put back afterwards (it is also the default for threads
    started meanwhile)."""
    first = next(parts, None)
    if first is None:
        return
    prototype = _BlockScorer(head, np.asarray(first[1]).shape[1], strategy, block_rows)  # inits the head once
    parts = itertools.chain([first], parts)
    lock, errors = threading.Lock(), []

    def next_part():
        with lock:  # the iterable (e.g. a generator reading the cache) is not thread-safe
            return next(parts, None)

    def work():
        try:
            torch.set_num_threads(1)
            scorer = prototype.sibling()
            while not errors and (item := next_part()) is not None:
                start, part = item
                scorer.score(part, out, start, start + len(part))
        except BaseException as exc:  # re-raised on the caller's thread below
            errors.append(exc)

    workers = [threading.Thread(target=work, name=f"score_pool-{i}", daemon=True) for i in range(threads)]
    # Where the OpenMP runtime shares the count across threads, two scorings at once could each save the other's
    # 1 and one put it back for good (not reproducible with this torch build). One scoring at a time: each
    # already uses every core it was given.
    with _THREAD_COUNT_LOCK:
        previous = torch.get_num_threads()
        try:
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        finally:
            torch.set_num_threads(previous)
    if errors:
        raise errors[0]


class _BlockScorer:
    """Scores one block of rows into slices of a PoolScores, reusing one logits buffer and its per-row vectors."""

    def __init__(self, head: ClassifierHead, dim: int, strategy: str, block_rows: int):
        head._ensure_init(dim)
        inverse_t = 1.0 / float(head.temperature)
        self.head, self.strategy = head, strategy
        # logits / T = x (W / T)^T + b / T: the temperature costs nothing per row.
        self.weight_t = (head.weight.float() * inverse_t).T.contiguous()
        self.bias = head.bias.float() * inverse_t
        self.prior_gain = head.prior_gain * inverse_t
        self.log_k = float(np.log(head.n_classes))
        self.block_rows = block_rows
        self._buffers()

    def sibling(self) -> "_BlockScorer":
        """A scorer sharing this one's weights with buffers of its own (one per thread)."""
        other = copy.copy(self)
        other._buffers()
        return other

    def _buffers(self) -> None:
        head, strategy, block_rows = self.head, self.strategy, self.block_rows
        self.logits = torch.empty(block_rows, head.n_classes)
        self.shifted = torch.empty(block_rows, head.n_classes) if strategy == "entropy" else None
        # per-row results of a block (sum of numerators, largest numerator, second largest): reused, not allocated
        self.rows = torch.empty(3, block_rows)

    def score(self, block: np.ndarray, out: PoolScores, start: int, end: int) -> None:
        x = np.ascontiguousarray(block, dtype=np.float32)  # no copy for float32 C-ordered rows
        rows = len(x)
        with torch.inference_mode():
            logits = self.logits[:rows]
            torch.addmm(self.bias, torch.from_numpy(x), self.weight_t, out=logits)
            if self.head.prior is not None:  # the label-probability prior's logit offset, as head.logits adds
                logits.add_(torch.from_numpy(self.head._offset(x).astype(np.float32)), alpha=self.prior_gain)
            # The arg max by NumPy (SIMD along a row of K), written straight into the result; the maximum by
            # gathering it: torch's max(dim=1) with indices over rows of ~100 classes costs twice both together.
            predicted = out.predicted[start:end]
            np.argmax(logits.numpy(), axis=1, out=predicted)
            index = torch.from_numpy(predicted)[:, None]
            top = logits.gather(1, index)[:, 0]
            # Softmax numerators e = exp(l - s). The shift s = row maximum guards exp against overflow; while
            # every row's maximum is within +-SAFE_LOGIT (any sane head) s = 0 is as exact and saves a pass.
            low, high = torch.aminmax(top)
            shift = not (-SAFE_LOGIT < low.item() and high.item() < SAFE_LOGIT)
            if shift:
                logits.sub_(top[:, None])
            if self.shifted is not None:
                shifted = self.shifted[:rows]
                shifted.copy_(logits)
            exps = logits.exp_()  # in place
            total, peak, second = self.rows[:, :rows]
            torch.sum(exps, dim=1, out=total)
            if shift:
                peak.fill_(1.0)  # the largest numerator
            else:
                torch.exp(top, out=peak)
            torch.div(peak, total, out=torch.from_numpy(out.confidence[start:end]))  # p1, written in place
            if self.strategy == "least":
                out.score[start:end] = out.confidence[start:end]
            elif self.strategy in ("margin", "gaussian"):  # (e_max - largest other e) / sum e
                torch.amax(exps.scatter_(1, index, 0.0), dim=1, out=second)
                torch.div(peak.sub_(second), total, out=torch.from_numpy(out.score[start:end]))
            elif self.strategy == "entropy":
                # H = log(sum e) - sum(e * (l - s)) / sum e, with e = exp(l - s)
                weighted = torch.sum(shifted.mul_(exps), dim=1, out=second)
                entropy = total.log().sub_(weighted.div_(total))
                out.uncertainty[start:end] = entropy.numpy()
                out.score[start:end] = (1.0 - entropy / self.log_k).clamp_(0.0, 1.0).numpy()
