"""Embedders loaded once per process, and the rules that name them (spec resolution, version prefixes).

A project records the embedder spec it was first connected with; the pool can hold several embedders so that
changing LABELLOOP_EMBEDDER later does not silently mix feature spaces inside an existing project.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Callable

from backend.loading import LoadOncePool

log = logging.getLogger(__name__)


def resolve_spec(spec: str) -> str:
    """Return a concrete embedder spec for `spec` without loading weights: "auto" becomes
    `labelers.embedders.resolve_auto_spec()` (CLIP when its weights are on disk, else EfficientNet-Lite0).
    Cheap enough for process start; never called inside /setup."""
    spec = (spec or "auto").strip()
    if spec != "auto":
        return spec
    from labelers.embedders import resolve_auto_spec

    return resolve_auto_spec()


def describe_spec(spec: str) -> dict[str, Any]:
    """Return {"spec", "family", "zero_shot"} for /health: CLIP (zero-shot) or the EfficientNet fallback."""
    clip = spec.startswith("open_clip:")
    return {"spec": spec, "family": "clip" if clip else "efficientnet-lite0",
            "zero_shot": clip, "fallback": not clip}


def version_prefix(spec: str) -> str:
    """Return a short, URL-safe model name for version strings, e.g. "clip-ViT-B-32" or "efficientnet-lite0-224"."""
    if spec.startswith("open_clip:local-dir:"):
        name = "clip-" + os.path.basename(spec[len("open_clip:local-dir:"):].rstrip("/"))
    elif spec.startswith("open_clip:"):
        name = "clip-" + spec[len("open_clip:"):].split("/", 1)[0]
    else:
        name = spec.replace("@", "-")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


class EmbedderPool(LoadOncePool):
    """Loads each embedder spec at most once per process (thread-safe) and serialises its forward passes."""

    kind = "embedder"

    def __init__(self, loader: Callable[[str], Any] | None = None):
        super().__init__(loader)
        self.compute_locks: dict[str, threading.Lock] = {}

    def _load(self, spec: str):
        from labelers.embedders import make_embedder

        return make_embedder(spec)

    def _unavailable(self, message: str) -> Exception:
        from labelers.embedders import EmbedderUnavailable

        return EmbedderUnavailable(message)

    def _ready(self, spec: str, embedder) -> None:
        self.compute_locks[embedder.id] = threading.Lock()
        log.info("embedder %s ready: id=%s dim=%s text=%s", spec, embedder.id, embedder.dim, embedder.has_text)
