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


def choose_spec(spec: str, clip: str | None = None) -> tuple[str, str]:
    """Return (concrete embedder spec, why) for `spec` without loading weights: "auto" becomes
    `labelers.auto_embedder.choose_auto_embedder(clip)`: the configured CLIP (settings.clip,
    LABELLOOP_CLIP) or the default CLIP when on disk or downloadable within a short timeout, else
    EfficientNet-Lite0. Cheap enough for process start (at most one short hub probe); never called in /setup."""
    spec = (spec or "auto").strip()
    if spec != "auto":
        return spec, "configured (LABELLOOP_EMBEDDER)"
    from labelers.auto_embedder import choose_auto_embedder

    choice = choose_auto_embedder(clip)
    return choice.spec, f"auto: {choice.reason}"


def resolve_spec(spec: str, clip: str | None = None) -> str:
    """Return the concrete embedder spec of `choose_spec(spec, clip)`."""
    return choose_spec(spec, clip)[0]


def describe_spec(spec: str, reason: str | None = None) -> dict[str, Any]:
    """Return {"spec", "family", "zero_shot", "fallback"[, "reason"]} for /health: CLIP (zero-shot from
    label names) or EfficientNet-Lite0 (image-only; the ImageNet prior through WordNet instead)."""
    clip = spec.startswith("open_clip:")
    out: dict[str, Any] = {"spec": spec, "family": "clip" if clip else "efficientnet-lite0",
                           "zero_shot": clip, "fallback": not clip}
    if reason:
        out["reason"] = reason
    return out


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
