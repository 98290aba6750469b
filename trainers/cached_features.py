"""Frozen features read from the embedding cache a block at a time (``labelloop train --stream-features``).

The in-memory path (trainers.features.with_features) holds every embedding of the pool at once, N x D floats.
Here the pool is embedded (or found in the cache) block by block and only its content keys are kept; training
reads each batch's rows from the cache when the batch is drawn, and the standardisation statistics are
summed over blocks. Peak rows held: one block while embedding or summing, one batch while training.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from trainers.features import FeatureError, _png_bytes
from trainers.labelset import LabelSet

DEFAULT_BLOCK = 4096  # rows embedded or summed at once: 4096 x 512 float32 is 8 MB


@dataclass
class ReadStats:
    """What the readers of one pool did: rows read in total and the most rows held by one read."""

    rows: int = 0
    peak_rows: int = 0

    def record(self, n: int) -> None:
        self.rows += n
        self.peak_rows = max(self.peak_rows, n)


class CachedFeatures:
    """The (N, D) float32 features of N content keys, read from an EmbeddingCache on demand.

    ``features[index]`` (an int, a slice, or an int array / tensor) returns those rows as a float32 tensor,
    standardised when ``mean``/``std`` are set. ``take(index)`` returns a lazy view of those rows (no read).
    Raises FeatureError naming the key when a row is no longer in the cache.
    """

    def __init__(self, cache, embedder_id: str, keys: np.ndarray, dim: int, block: int = DEFAULT_BLOCK,
                 mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
                 stats: ReadStats | None = None):
        self.cache, self.embedder_id, self.dim, self.block = cache, embedder_id, int(dim), int(block)
        self.keys = np.asarray(keys)
        self.mean, self.std = mean, std
        self.stats = stats or ReadStats()  # shared by every view of one pool

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.keys), self.dim)

    def take(self, index) -> "CachedFeatures":
        """Return a view of the rows ``index`` (ints); nothing is read."""
        return self._with(keys=self.keys[np.asarray(index, dtype=np.int64)])

    def standardized(self, mean: torch.Tensor, std: torch.Tensor) -> "CachedFeatures":
        """Return a view whose rows are read as ``(x - mean) / std``."""
        return self._with(mean=mean, std=std)

    def _with(self, **changes) -> "CachedFeatures":
        values = dict(cache=self.cache, embedder_id=self.embedder_id, keys=self.keys, dim=self.dim,
                      block=self.block, mean=self.mean, std=self.std, stats=self.stats)
        values.update(changes)
        return CachedFeatures(**values)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            keys = self.keys[index]
        elif isinstance(index, (int, np.integer)):
            return self[[int(index)]][0]
        else:
            keys = self.keys[np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64)]
        x = torch.from_numpy(self._read(list(keys)))
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x

    def _read(self, keys: list[str]) -> np.ndarray:
        found = self.cache.get_many(self.embedder_id, keys)
        missing = [k for k in keys if k not in found]
        if missing:
            raise FeatureError(f"embedding {missing[0][:12]}... of {self.embedder_id} is no longer in the cache "
                               f"{self.cache.path} ({len(missing)} of {len(keys)} rows missing); run again to "
                               "embed them")
        self.stats.record(len(keys))
        out = np.empty((len(keys), self.dim), dtype=np.float32)
        for i, key in enumerate(keys):
            out[i] = found[key]
        return out

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mean, standard deviation) per dimension over these rows, as torch.std (unbiased), with
        the std clamped at 1e-6 like the in-memory path; summed in float64, one block at a time."""
        n = len(self.keys)
        if n < 2:
            raise FeatureError(f"need at least 2 rows to standardise features, got {n}")
        total = np.zeros(self.dim, np.float64)
        for start in range(0, n, self.block):
            total += self._read(list(self.keys[start:start + self.block])).sum(axis=0, dtype=np.float64)
        mean = total / n
        squares = np.zeros(self.dim, np.float64)  # second pass: no cancellation from sum(x^2) - n mean^2
        for start in range(0, n, self.block):
            rows = self._read(list(self.keys[start:start + self.block])).astype(np.float64)
            squares += ((rows - mean) ** 2).sum(axis=0)
        std = np.sqrt(squares / (n - 1))
        return (torch.as_tensor(mean, dtype=torch.float32),
                torch.as_tensor(std, dtype=torch.float32).clamp(min=1e-6))


def with_cached_features(labels: LabelSet, embedder, cache, block: int = DEFAULT_BLOCK, batch_size: int = 64,
                         progress: bool = False) -> LabelSet:
    """Return ``labels`` with ``features`` a CachedFeatures over the embedding cache: every image is embedded
    (or found in ``cache``) ``block`` images at a time and only its content key is kept.

    Raises FeatureError naming the first image that could not be embedded, as with_features does.
    """
    from tqdm.auto import tqdm

    from labelers.cache import embed_blobs, embed_files

    if block < 1:
        raise FeatureError(f"the feature block must be at least 1 row, got {block}")
    if labels.paths is None and labels.images is None:
        raise FeatureError("no images to embed: the label set has neither files nor arrays")
    n = len(labels)
    keys = np.empty(n, dtype=f"U{64}")
    errors: dict[int, str] = {}
    for start in tqdm(range(0, n, block), desc="embed blocks", unit="block", disable=not progress):
        stop = min(n, start + block)
        if labels.paths is not None:
            result = embed_files(embedder, cache, [Path(p) for p in labels.paths[start:stop]],
                                 batch_size=batch_size)
        else:
            blobs = [_png_bytes(image) for image in labels.images[start:stop]]
            result = embed_blobs(embedder, cache, blobs, labels.names[start:stop], batch_size=batch_size)
        errors.update({start + i: message for i, message in result.errors.items()})
        keys[start:stop] = [k or "" for k in result.keys]
    if errors:
        raise FeatureError(f"{len(errors)} images could not be embedded, e.g. {next(iter(errors.values()))}")
    return replace(labels, features=CachedFeatures(cache, embedder.id, keys, embedder.dim, block))
