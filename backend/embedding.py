"""Task embeddings through the shared content-keyed cache: the embedding service a model is handed.

`EmbeddingService.embed(project, tasks, data_key)` returns one feature row per task, reading the cache first:
a task whose image was embedded once (by a predict, the warm-up or training) is never fetched again.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from backend.embedders import EmbedderPool
from backend.fetching import Fetcher

FETCH_CHUNK = 64  # tasks fetched and embedded together; bounds memory for huge /predict batches


class EmbedderMismatch(RuntimeError):
    """The project's recorded embedder now loads as a different model (weights changed or moved)."""


@dataclass
class TaskEmbeddings:
    """Features for tasks, in task order. Rows of NaN where `errors` says why, or listed in `pending`."""

    features: np.ndarray
    keys: list[str | None]
    errors: dict[int, str] = field(default_factory=dict)
    fetched: int = 0   # images downloaded / read for this call (0 when everything came from the cache)
    pending: list[int] = field(default_factory=list)  # rows not reached before the fetch deadline
    embedder: Any = None

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.features).any(axis=1) if len(self.features) else np.zeros(0, bool)


def fetch_deadline(start: float, budget: float, fetch_timeout: float) -> float:
    """Return the last moment a download may start so that it ends (or times out) within `budget` seconds of
    `start`: the budget minus one fetch timeout, but never less than half the budget."""
    return start + max(budget - fetch_timeout, budget / 2)


RECENT_VECTORS_BYTES = 64 * 2**20  # ~13k EfficientNet-Lite0 vectors (1280-d float32) kept in memory


class RecentVectors:
    """The cache's vectors a /predict read lately, kept in memory (least recently used dropped past
    `max_bytes`); thread-safe. Reading 100 vectors back from SQLite (rows, checksums, copies) was the largest
    part of a warm /predict. A content key names one image's bytes and an embedder id one model, so a kept
    vector is never stale."""

    def __init__(self, max_bytes: int = RECENT_VECTORS_BYTES):
        self.max_bytes, self.bytes = max_bytes, 0
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, cache, embedder_id: str, keys: list[str]) -> dict[str, np.ndarray]:
        """Return `cache.get_many(embedder_id, keys)`: the kept vectors from memory, the others from `cache`
        (then kept). The arrays are read-only: callers copy them into their feature matrix."""
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for key in keys:
                vector = self._vectors.get((embedder_id, key))
                if vector is not None:
                    self._vectors.move_to_end((embedder_id, key))
                    found[key] = vector
        missing = [k for k in keys if k not in found]
        if missing:
            read = cache.get_many(embedder_id, missing)
            with self._lock:
                for key, vector in read.items():
                    vector.flags.writeable = False
                    if (embedder_id, key) not in self._vectors:
                        self._vectors[(embedder_id, key)] = vector
                        self.bytes += vector.nbytes
                while self.bytes > self.max_bytes and self._vectors:
                    self.bytes -= self._vectors.popitem(last=False)[1].nbytes
            found.update(read)
        return found


class EmbeddingService:
    """Embeds a project's tasks with the project's own embedder, through the cache; thread-safe."""

    def __init__(self, store, cache, embedders: EmbedderPool, fetcher: Fetcher, batch_size: int = 32,
                 fetch_timeout: float = 20.0):
        self.store, self.cache, self.embedders, self.fetcher = store, cache, embedders, fetcher
        self.recent = RecentVectors()
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout

    @property
    def clock(self) -> Callable[[], float]:
        return self.fetcher.clock

    def embedder(self, project):
        """Return the loaded embedder of `project` (a store.Project), recording its id on first use.

        Raises EmbedderUnavailable when it cannot be loaded, EmbedderMismatch when the recorded spec now
        loads as a different model (mixing feature spaces would corrupt the head)."""
        embedder = self.embedders.get(project.embedder)
        if project.embedder_id is None:
            self.store.set_embedder_id(project.id, embedder.id)
        elif project.embedder_id != embedder.id:
            raise EmbedderMismatch(
                f"project {project.id} was embedded with {project.embedder_id} but {project.embedder} now "
                f"loads as {embedder.id}; restore those weights or reconnect the project under a new MODEL_DIR")
        return embedder

    def embed(self, project, tasks: list[dict[str, Any]], data_key: str,
              budget: float | None = None) -> TaskEmbeddings:
        """Return embeddings for `tasks` (`task["data"][data_key]`) of `project` (a store.Project).

        Tasks that cannot be resolved or decoded get a NaN row and an error message, so one bad image never
        sinks a batch. With a `budget` (seconds), no download starts after `fetch_deadline(...)`; the rows
        not reached are listed in `pending` (NaN, no error). Raises what `embedder()` raises.
        """
        embedder = self.embedder(project)
        deadline = None if budget is None else fetch_deadline(self.clock(), budget, self.fetch_timeout)
        result = embed_tasks(project.id, tasks, data_key, embedder, store=self.store, cache=self.cache,
                             fetcher=self.fetcher, batch_size=self.batch_size,
                             compute_lock=self.embedders.compute_locks.get(embedder.id), deadline=deadline,
                             recent=self.recent)
        result.embedder = embedder
        return result


def embed_tasks(project: str, tasks: list[dict[str, Any]], data_key: str, embedder, *, store, cache,
                fetcher: Fetcher, batch_size: int = 32, compute_lock: threading.Lock | None = None,
                deadline: float | None = None, recent: RecentVectors | None = None) -> TaskEmbeddings:
    """Return embeddings for `tasks`, cache first (through `recent` when given); see `EmbeddingService.embed`.
    `deadline` is on `fetcher.clock`. Only raises for programming errors."""
    n = len(tasks)
    features = np.full((n, embedder.dim), np.nan, dtype=np.float32)
    keys: list[str | None] = [None] * n
    ids, urls, errors = fetcher.media.task_sources(tasks, data_key)
    known_ids = [(t, u) for t, u in zip(ids, urls) if t is not None]
    seen = store.content_keys(project, [t for t, _ in known_ids])
    changed = [(t, u) for t, u in known_ids if t not in seen or seen[t][0] != u]
    if changed and _stored(store, "remembering tasks", store.remember_tasks, project, changed):
        # only new tasks or changed URLs cost a write; a warm predict is read-only
        seen.update(store.content_keys(project, [t for t, _ in changed]))
    for i, task_id in enumerate(ids):
        if task_id is not None and i not in errors:
            url, key = seen.get(task_id, (None, None))
            if key and url == urls[i]:
                keys[i] = key
    wanted = list(dict.fromkeys(k for k in keys if k))
    cached = ({} if not wanted else recent.get_many(cache, embedder.id, wanted) if recent is not None
              else cache.get_many(embedder.id, wanted))
    todo = []
    for i, key in enumerate(keys):
        if key and key in cached:
            features[i] = cached[key]
        elif i not in errors:
            todo.append(i)
    fetched = 0
    pending: list[int] = []
    for start in range(0, len(todo), FETCH_CHUNK):
        chunk = todo[start:start + FETCH_CHUNK]
        got = fetcher.fetch_all({i: urls[i] for i in chunk}, {i: ids[i] for i in chunk}, deadline)
        errors.update(got.errors)
        fetched += len(got.blobs)
        _embed_fetched(project, got.blobs, ids, embedder, store, cache, batch_size, compute_lock,
                       features, keys, errors)
        if got.not_started:  # the deadline passed inside this chunk: the rest waits for the background
            pending = sorted(got.not_started) + todo[start + FETCH_CHUNK:]
            break
    for i, message in errors.items():
        if ids[i] is not None:
            _stored(store, "recording a task error", store.set_task_error, project, ids[i], message)
    return TaskEmbeddings(features, keys, errors, fetched, pending)


def _stored(store, what: str, write, *args) -> bool:
    """Run the bookkeeping `write(*args)`; on a full MODEL_DIR note it (store.space_problem, /health) and
    return False instead of raising: the embeddings are still returned, only not remembered."""
    try:
        write(*args)
        return True
    except Exception as exc:
        if not store.note_disk_full(exc, what):
            raise
        return False


def _embed_fetched(project, blobs, ids, embedder, store, cache, batch_size, compute_lock, features, keys,
                   errors) -> None:
    """Embed fetched image bytes into `features`/`keys` in place and record their content keys."""
    from labelers.cache import embed_blobs

    order = sorted(blobs)
    if not order:
        return
    names = [f"task {ids[i]}" for i in order]
    with compute_lock or threading.Lock():
        try:
            result = embed_blobs(embedder, cache, [blobs[i] for i in order], names=names, batch_size=batch_size)
        except Exception as exc:  # a full disk refuses the cache write: embed them anyway, uncached
            if not store.note_disk_full(exc, "caching embeddings"):
                raise
            result = embed_blobs(embedder, None, [blobs[i] for i in order], names=names, batch_size=batch_size)
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
        _stored(store, "recording content keys", store.set_content_keys, project, new_keys)
