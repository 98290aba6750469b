"""Embedding a project's tasks in the background, so a later Retrieve Predictions over thousands of tasks is
answered from the cache within Label Studio's 100 s limit.

`warm(project)` embeds every task of a newly connected project (listed from Label Studio);
`embed_new_tasks(project, tasks)` embeds the tasks of a TASKS_CREATED event or of a /predict that ran out of
budget. Both run on one bounded executor per process: a burst of events queues work, it never starts a
thread per event. A per-project file lock keeps two worker processes from warming the same project.

A warm-up that fails (Label Studio or the network down) is retried with exponential back-off (tenacity), up to
WARM_ATTEMPTS; tasks embedded before the failure come from the cache on the retry. A refused API key is not
retried. After the last attempt the state is "failed", and the project's next /setup starts it again.
`status(project)` gives total, embedded, failed, rate and ETA; the log has a progress line every
PROGRESS_EVERY tasks.

With the heads (backend.heads.HeadCache) and the predictor rules, each embedded batch is also made ready for
/predict (`_ready_for_predict`): the ImageNet prior's probabilities of its images (backend.prior_cache) and the
label spreading rows of tasks embedded after the served version's graph (PoolScores.prepare) are computed
here, under the keys /predict reads, so a task's first /predict only reads them. `prepare_served(project)`
does the same over every embedded task after a retrain publishes a version. A /predict that comes first
computes what is missing itself, as without the warmer.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import numpy as np
from filelock import FileLock, Timeout
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_when_event_set, wait_exponential

from backend.labels import parse_label_config
from backend.logs import Redactor
from backend.ls_client import LabelStudioRejected
from backend.store import _safe_name

log = logging.getLogger(__name__)

WARM_BATCH = 64
BACKGROUND_WORKERS = 2  # warm-ups and new-task embeddings running at once per process
WARM_ATTEMPTS = 6       # with the back-off below: retried for about two minutes after Label Studio went away
PROGRESS_EVERY = 256    # tasks between two progress lines in the log
ACTIVE = ("running", "retrying")


def progress(entry: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """Return `entry` with "rate" (tasks per second of this attempt) and "eta_seconds" (None while unknown)."""
    now = time.time() if now is None else now
    out = dict(entry)
    if out.get("state") == "done" and out.get("finished_at"):
        now = out["finished_at"]  # a finished warm-up's rate is the one it ran at, not decaying with the clock
    done = out.get("tasks", 0)
    elapsed = now - out.get("attempt_started_at", out.get("started_at", now))
    out["rate"] = round(done / elapsed, 2) if elapsed > 0 and done else None
    total = out.get("total")
    if out.get("state") == "done":
        out["eta_seconds"] = 0.0
    elif total is not None and out["rate"]:
        out["eta_seconds"] = round(max(0, total - done) / out["rate"], 1)
    else:
        out["eta_seconds"] = None
    return out


class CacheWarmer:
    """Background embedding of tasks; `status(project)` is what /metrics shows under warm_cache."""

    def __init__(self, store, ls, embeddings, enabled: bool = True, redactor: Redactor | None = None,
                 workers: int = BACKGROUND_WORKERS, attempts: int = WARM_ATTEMPTS,
                 backoff=wait_exponential(multiplier=2, min=2, max=60), progress_every: int = PROGRESS_EVERY,
                 heads=None, rules=None):
        self.store, self.ls, self.embeddings = store, ls, embeddings
        # backend.heads.HeadCache and backend.predictor.PredictorRules: what /predict serves, so embedded
        # tasks are made ready for it (None: embedding only)
        self.heads, self.rules = heads, rules
        self.prepared = {"prior_rows": 0, "late_rows": 0}  # computed ahead of /predict (tests, benchmarks)
        self.enabled = enabled
        self.attempts, self.backoff, self.progress_every = attempts, backoff, progress_every
        self.redactor = redactor or Redactor()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="labelloop-background")
        self._status: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()  # checked between batches: a long warm-up ends soon after close()

    def started(self, project: str) -> bool:
        """True when a warm-up of `project` runs, waits to retry or finished here; False after a failed one,
        so the project's next /setup tries again (recovery without a restart)."""
        with self._lock:
            return self._status.get(project, {}).get("state", "failed") != "failed"

    def status(self, project: str) -> dict[str, Any] | None:
        """Return {"state": "running" | "retrying" | "done" | "failed" | "skipped" | "stopped", "total" (None
        when Label Studio did not say), "tasks" (listed so far), "embedded", "failed", "rate", "eta_seconds",
        "attempt", "last_error", ...}, or None when the project was never warmed here."""
        with self._lock:
            entry = self._status.get(project)
            return progress(entry) if entry else None

    def problems(self) -> list[str]:
        """Return one line per project whose warm-up failed or waits to retry (for /health), e.g. "project 3:
        warm-up retrying (attempt 2 failed: ConnectError ...)"."""
        with self._lock:
            entries = [(p, dict(e)) for p, e in self._status.items()
                       if e.get("state") in ("failed", "retrying") and not e.get("key_refused")]
        return [f"project {p}: warm-up {e['state']} (attempt {e.get('attempt', 0)} failed: {e.get('last_error')})"
                for p, e in entries]

    def warm(self, project: str) -> bool:
        """Queue the warm-up of `project`; returns False when it cannot (no Label Studio credentials, warm
        cache off) or need not run (already running)."""
        if not (self.enabled and self.ls.configured):
            return False
        with self._lock:
            if self._status.get(project, {}).get("state") in ACTIVE:
                return False
            now = time.time()
            self._status[project] = {"state": "running", "total": None, "tasks": 0, "embedded": 0, "failed": 0,
                                     "attempt": 0, "last_error": None, "started_at": now,
                                     "attempt_started_at": now}
        self._pool.submit(self._warm, project)
        return True

    def embed_new_tasks(self, project: str, tasks: list[dict[str, Any]]) -> int:
        """Queue the embedding of `tasks` (dicts with id and data); returns how many were queued."""
        tasks = [t for t in tasks if isinstance(t, dict) and isinstance(t.get("data"), dict) and "id" in t]
        if not (self.enabled and tasks):
            return 0
        self._pool.submit(self._embed_new, project, tasks)
        return len(tasks)

    def prepare_served(self, project: str) -> bool:
        """Queue `_ready_for_predict` over every embedded task of `project` for the version it serves now
        (called after a retrain publishes: its label spreading rows of tasks outside the graph start empty).
        Returns False when it cannot run (warm cache off, no heads)."""
        if not (self.enabled and self.heads is not None) or self._closing.is_set():
            return False
        try:
            self._pool.submit(self._prepare_all, project)
        except RuntimeError:  # shut down meanwhile: a retrain ending at close must not fail for it
            return False
        return True

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
                self._ready_for_predict(stored, self.embeddings.embed(stored, tasks[start:start + WARM_BATCH],
                                                                      data_key))
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
            retrying = Retrying(stop=stop_after_attempt(self.attempts) | stop_when_event_set(self._closing),
                                wait=self.backoff, sleep=self._closing.wait, reraise=True,
                                retry=retry_if_exception(lambda exc: not isinstance(exc, LabelStudioRejected)),
                                before_sleep=lambda state: self._retrying(project, state))
            if retrying(self._warm_once, project):
                self._update(project, state="done", finished_at=time.time(), last_error=None)
                log.info("project %s: cache warm (%s)", project, _summary(self.status(project)))
        except Exception as exc:  # warming is best effort; predict still works without it
            detail = self.redactor.error(exc)
            log.warning("project %s: warming the embedding cache failed (%s); the next /setup tries again",
                        project, detail)
            # A refused key is /health's own problem already (the auth says it once): not repeated per project.
            self._update(project, state="failed", detail=detail, last_error=detail,
                         key_refused=isinstance(exc, LabelStudioRejected))
        finally:
            lock.release()

    def _retrying(self, project: str, state) -> None:
        detail = self.redactor.error(state.outcome.exception())
        wait = state.next_action.sleep if state.next_action else 0
        log.warning("project %s: warm-up attempt %d failed (%s); retrying in %.0fs", project,
                    state.attempt_number, detail, wait)
        self._update(project, state="retrying", last_error=detail, retry_in_seconds=round(wait, 1))

    def _warm_once(self, project: str) -> bool:
        """One pass over the project's tasks; returns False when the backend is shutting down. Raises when
        Label Studio cannot be listed (retried by `_warm`)."""
        now = time.time()
        with self._lock:
            entry = self._status[project]
            entry.update(state="running", tasks=0, embedded=0, failed=0, attempt=entry["attempt"] + 1,
                         attempt_started_at=now)
        stored = self.store.get_project(project)
        data_key = parse_label_config(stored.label_config).data_key
        batch: list[dict[str, Any]] = []
        for task in self.ls.iter_tasks(project, on_total=lambda total: self._update(project, total=total)):
            if self._closing.is_set():
                self._update(project, state="stopped", detail="the backend is shutting down")
                return False
            batch.append(task)
            if len(batch) >= WARM_BATCH:
                self._embed_counted(stored, batch, data_key)
                batch = []
        if batch:
            self._embed_counted(stored, batch, data_key)
        return True

    def _embed_counted(self, stored, tasks: list[dict[str, Any]], data_key: str) -> None:
        result = self.embeddings.embed(stored, tasks, data_key)
        self._ready_for_predict(stored, result)
        with self._lock:
            entry = self._status[stored.id]
            before = entry["tasks"]
            entry["tasks"] += len(tasks)
            entry["embedded"] += int(result.ok.sum())
            entry["failed"] += len(result.errors)
            if result.errors:  # e.g. a wrong document root: every image fails the same way
                entry["last_task_error"] = next(iter(result.errors.values()))
            line = before // self.progress_every != entry["tasks"] // self.progress_every
        if line:
            log.info("project %s: warm-up %s", stored.id, _summary(self.status(stored.id)))

    # -- ready for /predict --------------------------------------------------------------------------------------
    def _prepare_all(self, project: str, chunk: int = 1024) -> None:
        """`_ready_for_predict` over every embedded image of `project`, read back from the embedding cache."""
        try:
            stored = self.store.get_project(project)
            embedder = self.embeddings.embedder(stored)
            served = self._served(stored, embedder)
            if served is None:
                return
            head, version, _ = served
            keys = self.store.project_content_keys(project)
            # Only the vectors of images with something left to compute are read back (100k vectors: ~0.5 GB)
            prior, pool = getattr(head, "prior", None), self.heads.pool(project, version)
            todo = set(self.heads.prior_cache.missing(prior, embedder.id, keys)) if prior is not None else set()
            todo.update(pool.unsearched(keys) if pool is not None else [])
            keys = [k for k in keys if k in todo]
            for start in range(0, len(keys), chunk):
                if self._closing.is_set():
                    return
                part = keys[start:start + chunk]
                got = self.embeddings.cache.get_many(embedder.id, part)
                found = [k for k in part if k in got]
                if found:
                    self._ready_for_predict(stored, SimpleNamespace(
                        keys=found, features=np.stack([got[k] for k in found]),
                        ok=np.ones(len(found), bool), embedder=embedder))
        except Exception as exc:  # best effort: /predict computes what is missing
            log.warning("project %s: preparing the served version for /predict failed (%s); the first /predict "
                        "of each task computes it", project, self.redactor.error(exc))

    def _ready_for_predict(self, stored, embedded) -> None:
        """Compute what the first /predict of the tasks in `embedded` (a backend.embedding.TaskEmbeddings of
        `stored`, a store.Project) would, under the keys it reads: the served head's ImageNet prior
        probabilities (HeadCache.prior_cache, keyed by the prior's fingerprint: the current label set, synonyms
        and embedder) and, for a mix / lp version, the label spreading rows of the tasks outside its graph
        (PoolScores.prepare). Only for a project /predict serves with the head (not a VLM, box or relabel
        project). Never raises (logged): /predict computes whatever is missing."""
        if self.heads is None or self.rules is None or not len(embedded.keys) or not embedded.ok.any():
            return
        try:
            served = self._served(stored, embedded.embedder)
            if served is None:
                return
            head, version, target = served
            rows = np.flatnonzero(embedded.ok)
            keys = [embedded.keys[i] for i in rows.tolist()]
            features = embedded.features[rows]
            prior = getattr(head, "prior", None)
            filled = late = 0
            if prior is not None:
                filled = self.heads.prior_cache.fill(prior, embedded.embedder.id, keys, features)
            pool = self.heads.pool(stored.id, version)
            if pool is not None and tuple(pool.labels) == tuple(target.labels):  # else /predict serves the head
                late = pool.prepare(keys, features, self.embeddings.cache.get_many)
            with self._lock:
                self.prepared["prior_rows"] += filled
                self.prepared["late_rows"] += late
        except Exception as exc:  # an optimisation only: never a reason to fail the embedding
            log.info("project %s: tasks embedded, but not prepared for /predict (%s: %s); their first /predict "
                     "computes it", stored.id, type(exc).__name__, self.redactor.error(exc))

    def _served(self, stored, embedder):
        """Return (head, version it is, target) /predict would serve `stored` with now, or None when /predict
        does not serve it with the head (a VLM, box or relabel project, or a label config it refuses): decided
        by /predict's own rule, backend.routing.Route."""
        from backend.labels import LabelConfigError
        from backend.routing import Route

        stored = self.store.get_project(stored.id)  # the label config and version as of now, not of the warm-up
        route = Route(self.rules, stored.label_config, stored.extra_params)
        try:
            if route.kind != "head":
                return None
        except LabelConfigError:
            return None  # /predict answers 422 for it: nothing to prepare
        current = self.store.get_version(stored.id, self.store.current_version(stored.id))
        head, version = self.heads.serving(stored.id, current, route.target, embedder)
        return head, version, route.target


def _summary(entry: dict[str, Any] | None) -> str:
    """Return "300/1000 tasks, 298 embedded, 2 failed, 12.5 tasks/s, ETA 56s" for the log."""
    if not entry:
        return "not started"
    total = entry.get("total")
    parts = [f"{entry['tasks']}/{total if total is not None else '?'} tasks", f"{entry['embedded']} embedded",
             f"{entry['failed']} failed"]
    if entry.get("rate"):
        parts.append(f"{entry['rate']} tasks/s")
    if entry.get("eta_seconds") is not None and entry.get("state") != "done":
        parts.append(f"ETA {entry['eta_seconds']:.0f}s")
    return ", ".join(parts)
