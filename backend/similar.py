""""More like this" in Label Studio: while a project's extra_params hold {"similar_to": ...}, every task's
exported score is its rank by cosine similarity to the reference over ALL the project's cached embeddings.

Reference: a task id of the project (its cached embedding), or an image URL / local-files path (fetched and
embedded with the project's embedder on the first /predict). Score = rank / n in [0, 1): the reference's
most similar task has the lowest score, so sorting the Data Manager by score ascending shows "more like
this" first. Pre-annotations are unchanged. A reference that cannot be found or embedded is refused with
a LabelConfigError (422 at /setup when it can already be judged there, else at /predict): never a silent
fall back to the uncertainty order.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import numpy as np

from backend.cold_start import project_embeddings
from backend.labels import LabelConfigError

log = logging.getLogger(__name__)

PARAM = "similar_to"


def parse_reference(extra: dict[str, Any] | None) -> int | str | None:
    """Return extra_params["similar_to"]: a task id (int), an image URL / path (str), or None when unset.

    Raises LabelConfigError for anything else (a list, a float, an empty string)."""
    value = (extra or {}).get(PARAM)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip():
        text = value.strip()
        return int(text) if text.isdigit() else text
    raise LabelConfigError(f"extra_params {PARAM} must be a task id or an image URL / local-files path, got "
                           f"{value!r}")


class SimilarityOrder:
    """Per project: {content key: similarity rank score} for one reference; thread-safe, recomputed when the
    project's embedded pool or the reference changes."""

    def __init__(self, store, cache):
        self.store, self.cache = store, cache
        self._orders: dict[str, tuple[tuple, dict[str, float]]] = {}
        self._references: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()
        self.computed = 0  # how many orders were computed (a repeated /predict reuses the last one)

    def task_reference(self, project: str, embedder_id: str, task_id: int) -> np.ndarray:
        """Return the cached embedding of task `task_id` of `project`.

        Raises LabelConfigError naming why: a task this backend has not seen in the project, one whose image
        could not be read, or one not embedded yet."""
        seen = self.store.content_keys(project, [task_id])
        if task_id not in seen:
            raise LabelConfigError(
                f"extra_params {PARAM}: task {task_id} is not a task of project {project} that this backend has "
                f"seen ({len(self.store.embedded_tasks(project))} embedded); check the id in the Data Manager")
        key = seen[task_id][1]
        vector = self.cache.get_many(embedder_id, [key]).get(key) if key else None
        if vector is None:
            raise LabelConfigError(f"extra_params {PARAM}: the image of task {task_id} of project {project} is "
                                   "not embedded (unreadable, or still being embedded: see /metrics and the log)")
        return vector

    def reference(self, project: str, embedder_id: str, ref: int | str,
                  embed_url: Callable[[str], np.ndarray]) -> np.ndarray:
        """Return the reference's embedding: a task's cached one, or `embed_url(ref)` for a URL (remembered,
        so the image is fetched once). Raises LabelConfigError when it cannot be found or embedded."""
        if isinstance(ref, int):
            return self.task_reference(project, embedder_id, ref)
        key = (project, embedder_id, ref)
        with self._lock:
            if key in self._references:
                return self._references[key]
        vector = embed_url(ref)
        with self._lock:
            self._references[key] = vector
        return vector

    def scores(self, project: str, embedder_id: str, ref: int | str, reference: np.ndarray) -> dict[str, float]:
        """Return {content key: rank / n} over the project's cached embeddings, most similar to `reference`
        first (score 0). Raises LabelConfigError when the project has no embedded task yet."""
        from labelers.similarity import SimilarityError, rank_by_similarity

        keys = self.store.project_content_keys(project)
        stamp = (embedder_id, ref, frozenset(keys))
        with self._lock:
            entry = self._orders.get(project)
            if entry and entry[0] == stamp:
                return entry[1]
        known, features = project_embeddings(self.store, self.cache, project, embedder_id, keys)
        if not known:
            raise LabelConfigError(f"extra_params {PARAM}: project {project} has no embedded task to order yet")
        try:
            order, _ = rank_by_similarity(features, reference)
        except SimilarityError as exc:
            raise LabelConfigError(f"extra_params {PARAM} {ref!r}: {exc}") from None
        ranked = {known[i]: rank / len(known) for rank, i in enumerate(order)}
        with self._lock:
            self._orders[project] = (stamp, ranked)
            self.computed += 1
        log.info("project %s: tasks ordered by similarity to %s over %d embedded tasks", project, ref, len(known))
        return ranked


def cli_project_embeddings(model_dir, project: str):
    """Return (features (N, D), names "task <id>", embedder spec, embedder id) of every embedded task of
    `project` in MODEL_DIR's cache, for `labelloop similar --project` (registered by backend.cli).

    Raises ValueError naming what is missing: the folder, the project (listing the known ones), or embeddings."""
    from pathlib import Path

    from labelers.cache import EmbeddingCache

    from backend.store import Store

    model_dir = Path(model_dir)
    if not (model_dir / "embeddings.sqlite3").is_file():
        raise ValueError(f"{model_dir} holds no backend state (no embeddings.sqlite3): pass the MODEL_DIR the "
                         "backend runs with")
    store = Store(model_dir)
    try:
        found = store.get_project(str(project))
        if found is None:
            known = ", ".join(p.id for p in store.list_projects()) or "none"
            raise ValueError(f"project {project} is not in {model_dir} (projects: {known})")
        tasks = store.embedded_tasks(found.id)
        cache = EmbeddingCache(model_dir / "embeddings.sqlite3")
        vectors = cache.get_many(found.embedder_id, list(tasks.values())) if found.embedder_id and tasks else {}
    finally:
        store.close()
    rows = [(t, key) for t, key in tasks.items() if key in vectors]
    if not rows:
        raise ValueError(f"project {project} has no embedded task in {model_dir} yet (the backend embeds a "
                         "project's tasks after /setup; see `labelloop status`)")
    features = np.stack([vectors[key] for _, key in rows])
    return features, [f"task {t}" for t, _ in rows], found.embedder, found.embedder_id
