"""Embedding a project's tasks in the background, so a later Retrieve Predictions over thousands of tasks is
answered from the cache within Label Studio's 100 s limit.

`warm(project)` embeds every task of a newly connected project (listed from Label Studio);
`embed_new_tasks(project, tasks)` embeds the tasks of a TASKS_CREATED event or of a /predict that ran out of
budget. Both run on one bounded executor per process: a burst of events queues work, it never starts a
thread per event. A per-project file lock keeps two worker processes from warming the same project.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from filelock import FileLock, Timeout

from backend.labels import parse_label_config
from backend.logs import Redactor
from backend.store import _safe_name

log = logging.getLogger(__name__)

WARM_BATCH = 64
BACKGROUND_WORKERS = 2  # warm-ups and new-task embeddings running at once per process


class CacheWarmer:
    """Background embedding of tasks; `status(project)` is what /metrics shows under warm_cache."""

    def __init__(self, store, ls, embeddings, enabled: bool = True, redactor: Redactor | None = None,
                 workers: int = BACKGROUND_WORKERS):
        self.store, self.ls, self.embeddings = store, ls, embeddings
        self.enabled = enabled
        self.redactor = redactor or Redactor()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="labelloop-background")
        self._status: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()  # checked between batches: a long warm-up ends soon after close()

    def started(self, project: str) -> bool:
        with self._lock:
            return project in self._status

    def status(self, project: str) -> dict[str, Any] | None:
        """Return {"state": "running" | "done" | "failed" | "skipped" | "stopped", "tasks", "embedded",
        "failed", ...}, or None when the project was never warmed here."""
        with self._lock:
            entry = self._status.get(project)
            return dict(entry) if entry else None

    def warm(self, project: str) -> bool:
        """Queue the warm-up of `project`; returns False when it cannot (no Label Studio credentials, warm
        cache off) or need not run (already running)."""
        if not (self.enabled and self.ls.configured):
            return False
        with self._lock:
            if self._status.get(project, {}).get("state") == "running":
                return False
            self._status[project] = {"state": "running", "tasks": 0, "embedded": 0, "failed": 0,
                                     "started_at": time.time()}
        self._pool.submit(self._warm, project)
        return True

    def embed_new_tasks(self, project: str, tasks: list[dict[str, Any]]) -> int:
        """Queue the embedding of `tasks` (dicts with id and data); returns how many were queued."""
        tasks = [t for t in tasks if isinstance(t, dict) and isinstance(t.get("data"), dict) and "id" in t]
        if not (self.enabled and tasks):
            return 0
        self._pool.submit(self._embed_new, project, tasks)
        return len(tasks)

    def run_in_background(self, fn, *args) -> None:
        """Run `fn(*args)` on the background executor (e.g. preloading the embedder at start)."""
        self._pool.submit(fn, *args)

    def close(self) -> None:
        """Cancel queued work; running work stops at its next batch."""
        self._closing.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _embed_new(self, project: str, tasks: list[dict[str, Any]]) -> None:
        try:
            stored = self.store.get_project(project)
            data_key = parse_label_config(stored.label_config).data_key
            for start in range(0, len(tasks), WARM_BATCH):
                if self._closing.is_set():
                    return
                self.embeddings.embed(stored, tasks[start:start + WARM_BATCH], data_key)
        except Exception as exc:  # best effort, like warming: predict embeds whatever is missing
            log.warning("project %s: embedding %d new tasks failed (%s)", project, len(tasks),
                        self.redactor.error(exc))

    def _update(self, project: str, **values: Any) -> None:
        with self._lock:
            self._status[project].update(values)

    def _warm(self, project: str) -> None:
        lock = FileLock(str(self.store.model_dir / "locks" / f"warm-{_safe_name(project)}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            self._update(project, state="skipped", detail="another worker process is warming this project")
            return
        try:
            stored = self.store.get_project(project)
            data_key = parse_label_config(stored.label_config).data_key
            batch: list[dict[str, Any]] = []
            for task in self.ls.iter_tasks(project):
                if self._closing.is_set():
                    self._update(project, state="stopped", detail="the backend is shutting down")
                    return
                batch.append(task)
                if len(batch) >= WARM_BATCH:
                    self._embed_counted(stored, batch, data_key)
                    batch = []
            if batch:
                self._embed_counted(stored, batch, data_key)
            self._update(project, state="done", finished_at=time.time())
            log.info("project %s: cache warm (%s)", project, self.status(project))
        except Exception as exc:  # warming is best effort; predict still works without it
            detail = self.redactor.error(exc)
            log.warning("project %s: warming the embedding cache failed (%s)", project, detail)
            self._update(project, state="failed", detail=detail)
        finally:
            lock.release()

    def _embed_counted(self, stored, tasks: list[dict[str, Any]], data_key: str) -> None:
        result = self.embeddings.embed(stored, tasks, data_key)
        with self._lock:
            entry = self._status[stored.id]
            entry["tasks"] += len(tasks)
            entry["embedded"] += int(result.ok.sum())
            entry["failed"] += len(result.errors)
