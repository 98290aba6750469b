"""Frozen embeddings for training heads: computed once per image through the shared embedding cache."""
from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np

from trainers.labelset import LabelSet


class FeatureError(ValueError):
    """Some images could not be embedded; the message names the first."""


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image).squeeze()).save(buffer, format="PNG")
    return buffer.getvalue()


def with_features(labels: LabelSet, embedder, cache, batch_size: int = 64, progress: bool = True) -> LabelSet:
    """Return ``labels`` with ``features`` filled from ``embedder`` via ``cache`` (labelers.cache).

    Images come from ``labels.paths`` (files) or ``labels.images`` (arrays, PNG-encoded for the cache
    key). Raises FeatureError naming the first image that could not be read.
    """
    from labelers.cache import embed_blobs, embed_files

    if labels.paths is not None:
        result = embed_files(embedder, cache, [Path(p) for p in labels.paths], batch_size=batch_size, progress=progress)
    elif labels.images is not None:
        blobs = [_png_bytes(image) for image in labels.images]
        result = embed_blobs(embedder, cache, blobs, labels.names, batch_size=batch_size, progress=progress)
    else:
        raise FeatureError("no images to embed: the label set has neither files nor arrays")
    if result.errors:
        first = next(iter(result.errors.values()))
        count = len(result.errors)
        raise FeatureError(f"{count} image{'s' if count > 1 else ''} could not be read (the first: {first}); "
                           "fix or remove them and run again")
    return replace(labels, features=result.features.astype(np.float32))
