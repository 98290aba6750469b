"""The ImageNet prior's label probabilities per image, computed once and then read by every /predict.

An untrained head on an image-only embedder (and every head retrained from it: the prior stays as an offset)
needs the prior's probabilities for each task it predicts: a product of the features with ImageNet's
classifier (100 x 1280 @ 1280 x ~250 used classes per 100-task batch), most of a warm /predict's own
compute. They depend only on the image and the prior, not on the head's version, so they are kept per
content key and survive retrains. The warmer (backend.warmer) fills them with `fill` as it embeds a task and
after a retrain publishes, so a task's first /predict only reads them; `probabilities` computes whatever is
still missing (a /predict that came first), with the same result.

Entries are keyed by a fingerprint of the prior (embedder id, label names, the aggregation matrix, the
classifier's bias and feature scale, and a strided sample of its weights): a new label config, label
synonyms, another embedder or a prior whose arrays were replaced is another key and never reads the old
scores. The fingerprint is hashed once per prior object and embedder id (1.5 ms for 250 labels, on every
/predict before), and again only when what it was hashed from was replaced: the label names, the feature scale
or one of the arrays (another array object). A prior's arrays are never written into in place
(labelers.priors builds them once; to change a prior, give it new arrays).
"""
from __future__ import annotations

import hashlib
import json
import threading
import weakref

import numpy as np

from backend.row_memo import RowMemo


MAX_IMAGES = 200_000  # per prior: ~K floats an image (10 labels: ~0.2 KB with the key); past it, start over
MAX_PRIORS = 4        # label sets kept at once; the least recently used one is dropped first
WEIGHT_SAMPLE = 4099  # every n-th classifier weight goes into the fingerprint (a prime: no row alignment)


# prior -> (what its fingerprint was hashed from, the fingerprint); weak: a prior dropped from its caches goes
_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_FINGERPRINTS_LOCK = threading.Lock()


def prior_fingerprint(prior, embedder_id: str) -> str:
    """Return a digest naming `prior` (a labelers.priors.ClassifierPrior) on `embedder_id`'s features.

    Hashed on the first call for this prior object and embedder id, then read back while the prior keeps the
    same label names, feature scale and array objects (the basis holds the arrays, so a replaced one cannot
    come back under a recycled id)."""
    basis = (embedder_id, tuple(prior.label_names), prior.feature_scale, prior.weight, prior.bias,
             prior.aggregation)
    with _FINGERPRINTS_LOCK:
        known = _FINGERPRINTS.get(prior)
    if known is not None and _same_basis(known[0], basis):
        return known[1]
    fingerprint = _digest(prior, embedder_id)
    with _FINGERPRINTS_LOCK:
        _FINGERPRINTS[prior] = (basis, fingerprint)
    return fingerprint


def _same_basis(old: tuple, new: tuple) -> bool:
    """True when the names and scale are equal and the arrays are the very same objects."""
    return old[:3] == new[:3] and all(a is b for a, b in zip(old[3:], new[3:]))


def _digest(prior, embedder_id: str) -> str:
    """Hash the prior: embedder id, names, scale, shapes, aggregation, bias and a strided weight sample.

    The weights (5 MB for ImageNet) are sampled, not hashed whole: they come with the embedder, whose id is
    in the digest."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([embedder_id, prior.label_names, prior.feature_scale,
                              list(prior.weight.shape)]).encode())
    for array in (prior.aggregation, prior.bias, prior.weight.reshape(-1)[::WEIGHT_SAMPLE]):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class PriorCache:
    """{prior fingerprint: RowMemo of the prior's label probabilities (K,) per content key}; thread-safe."""

    def __init__(self, max_images: int = MAX_IMAGES, max_priors: int = MAX_PRIORS):
        self.max_images, self.max_priors = max_images, max_priors
        self._rows: dict[str, RowMemo] = {}  # insertion order = least recently used first
        self._lock = threading.Lock()
        self.computed = 0  # images whose prior was computed (tests check a second /predict computes none)

    def _memo(self, fingerprint: str) -> RowMemo:
        """Return the prior's memo (a new one if unknown), now the most recently used label set."""
        with self._lock:
            memo = self._rows.pop(fingerprint, None) or RowMemo(self.max_images, "prior cache")
            self._rows[fingerprint] = memo  # most recently used last
            while len(self._rows) > self.max_priors:
                self._rows.pop(next(iter(self._rows)))
            return memo

    def probabilities(self, prior, embedder_id: str, keys: list[str | None], features: np.ndarray) -> np.ndarray:
        """Return `prior.proba(features)` (N, K), reading the rows of known content keys from the cache and
        computing (then keeping) the others; a row without a key (None) is computed and not kept."""
        if not len(keys):
            return np.zeros((0, len(prior.label_names)))
        found, computed = self._memo(prior_fingerprint(prior, embedder_id)).rows(
            keys, lambda todo: prior.proba(features[todo] if len(todo) < len(keys) else features))
        with self._lock:
            self.computed += computed
        return np.stack(found)

    def missing(self, prior, embedder_id: str, keys: list[str]) -> list[str]:
        """Return the keys among `keys` whose row is not cached under this prior's fingerprint."""
        with self._lock:
            memo = self._rows.get(prior_fingerprint(prior, embedder_id))
        return list(keys) if memo is None else memo.missing(keys)

    def fill(self, prior, embedder_id: str, keys: list[str], features: np.ndarray) -> int:
        """Compute and keep the rows of `keys` (content keys of `features`' rows) not yet cached under this
        prior's fingerprint (the warmer's images, ahead of /predict); returns how many were computed."""
        unknown = set(self.missing(prior, embedder_id, keys))
        todo = [i for i, k in enumerate(keys) if k in unknown]
        for start in range(0, len(todo), 1024):  # bounded temporaries for a big pool
            chunk = todo[start:start + 1024]
            self.probabilities(prior, embedder_id, [keys[i] for i in chunk], features[chunk])
        return len(todo)
