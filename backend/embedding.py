"""Embedders loaded once per process, and task embeddings through the shared content-keyed cache.

A project records the embedder spec it was first connected with; the pool can hold several embedders so that
changing LABELLOOP_EMBEDDER later does not silently mix feature spaces inside an existing project.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from backend.loading import LoadOncePool
from backend.media import MediaResolver

log = logging.getLogger(__name__)

FETCH_CHUNK = 64  # tasks fetched and embedded together; bounds memory for huge /predict batches


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


@dataclass
class TaskEmbeddings:
    """Features for tasks, in task order. Rows of NaN where `errors` says why."""

    features: np.ndarray
    keys: list[str | None]
    errors: dict[int, str] = field(default_factory=dict)
    fetched: int = 0   # images downloaded / read for this call (0 when everything came from the cache)
    pending: list[int] = field(default_factory=list)  # rows left unembedded because the deadline passed

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.features).any(axis=1) if len(self.features) else np.zeros(0, bool)


def embed_tasks(project: str, tasks: list[dict[str, Any]], data_key: str, embedder, *, store, cache,
                media: MediaResolver, threads: int = 4, batch_size: int = 32,
                compute_lock: threading.Lock | None = None, deadline: float | None = None) -> TaskEmbeddings:
    """Return embeddings for `tasks` (`task["data"][data_key]`), reading the cache first.

    A task whose content key is known (from an earlier predict, warm-up or training) and cached is never
    fetched again. Tasks that cannot be resolved or decoded get a NaN row and an error message; this
    function itself only raises for programming errors, so one bad image never sinks a batch.
    With a `deadline` (time.monotonic()), no new chunk is started after it; the rows not reached are
    listed in `pending` (NaN, no error).
    """
    from labelers.cache import embed_blobs

    n = len(tasks)
    features = np.full((n, embedder.dim), np.nan, dtype=np.float32)
    keys: list[str | None] = [None] * n
    ids, urls, errors = media.task_sources(tasks, data_key)
    known_ids = [(t, u) for t, u in zip(ids, urls) if t is not None]
    seen = store.content_keys(project, [t for t, _ in known_ids])
    changed = [(t, u) for t, u in known_ids if t not in seen or seen[t][0] != u]
    if changed:  # only new tasks or changed URLs cost a write; a warm predict is read-only
        store.remember_tasks(project, changed)
        seen.update(store.content_keys(project, [t for t, _ in changed]))
    for i, task_id in enumerate(ids):
        if task_id is not None and i not in errors:
            url, key = seen.get(task_id, (None, None))
            if key and url == urls[i]:
                keys[i] = key
    cached = cache.get_many(embedder.id, [k for k in keys if k]) if any(keys) else {}
    todo = []
    for i, key in enumerate(keys):
        if key and key in cached:
            features[i] = cached[key]
        elif i not in errors:
            todo.append(i)
    fetched = 0
    pending: list[int] = []
    for start in range(0, len(todo), FETCH_CHUNK):
        if deadline is not None and time.monotonic() >= deadline:
            pending = todo[start:]
            break
        chunk = todo[start:start + FETCH_CHUNK]
        blobs, fetch_errors = media.fetch_many({i: urls[i] for i in chunk}, {i: ids[i] for i in chunk}, threads)
        errors.update(fetch_errors)
        fetched += len(blobs)
        order = sorted(blobs)
        if not order:
            continue
        names = [f"task {ids[i]}" for i in order]
        lock = compute_lock or threading.Lock()
        with lock:
            result = embed_blobs(embedder, cache, [blobs[i] for i in order], names=names, batch_size=batch_size)
        new_keys: dict[int, str] = {}
        for j, i in enumerate(order):
            if j in result.errors:
                errors[i] = result.errors[j]
                continue
            features[i] = result.features[j]
            keys[i] = result.keys[j]
            if ids[i] is not None and keys[i]:
                new_keys[ids[i]] = keys[i]
        if new_keys:
            store.set_content_keys(project, new_keys)
    for i, message in errors.items():
        if ids[i] is not None:
            store.set_task_error(project, ids[i], message)
    return TaskEmbeddings(features, keys, errors, fetched, pending)
