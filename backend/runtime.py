"""The process-wide collaborators behind every LabelloopModel: built once per worker process, never per request."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any, Callable

import httpx
from filelock import FileLock, Timeout

from backend.config import ConfigError, Settings
from backend.embedding import EmbedderPool, describe_spec, embed_tasks, resolve_spec
from backend.heads import HeadCache
from backend.labels import LabelConfigError, parse_label_config
from backend.ls_auth import LabelStudioAuth
from backend.ls_client import LabelStudioClient, VersionSync
from backend.media import MediaResolver
from backend.store import Store, _safe_name
from backend.training import TrainingQueue
from backend.vlm import VLMPool

log = logging.getLogger(__name__)

WARM_BATCH = 64


def _vlm_settings(settings: Settings):
    """Return the VLM settings (configs/vlm.yaml merged with vlm_config); raises ConfigError naming the file."""
    from labelers.vlm.settings import SettingsError, load_settings as load_vlm_settings

    try:
        return load_vlm_settings(settings.vlm_config)
    except (SettingsError, OSError) as exc:
        raise ConfigError(f"vlm_config (LABELLOOP_VLM_CONFIG): {exc}") from None


class Counters:
    """Thread-safe counters for /metrics (per worker process)."""

    def __init__(self):
        self._counts: Counter = Counter()
        self._lock = threading.Lock()

    def add(self, **amounts: int) -> None:
        with self._lock:
            self._counts.update(amounts)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class CacheWarmer:
    """Embeds a project's tasks in the background when it connects, so a later Retrieve Predictions over
    thousands of tasks is answered from the cache within Label Studio's 100 s limit."""

    def __init__(self, runtime: "Runtime"):
        self.runtime = runtime
        self._status: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def started(self, project: str) -> bool:
        with self._lock:
            return project in self._status

    def status(self, project: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._status.get(project)
            return dict(entry) if entry else None

    def warm(self, project: str) -> bool:
        """Start warming `project` in a background thread; returns False when it cannot or need not run."""
        runtime = self.runtime
        if not (runtime.settings.warm_cache and runtime.ls.configured):
            return False
        with self._lock:
            if self._status.get(project, {}).get("state") == "running":
                return False
            self._status[project] = {"state": "running", "tasks": 0, "embedded": 0, "failed": 0,
                                     "started_at": time.time()}
        threading.Thread(target=self._run, args=(project,), name=f"labelloop-warm-{project}", daemon=True).start()
        return True

    def embed_new_tasks(self, project: str, tasks: list[dict[str, Any]]) -> int:
        """Embed freshly imported tasks (a TASKS_CREATED payload) in the background; returns how many."""
        tasks = [t for t in tasks if isinstance(t, dict) and isinstance(t.get("data"), dict) and "id" in t]
        if not (self.runtime.settings.warm_cache and tasks):
            return 0

        def run() -> None:
            try:
                stored = self.runtime.store.get_project(project)
                target = parse_label_config(stored.label_config)
                embedder = self.runtime.embedders.get(stored.embedder)
                for start in range(0, len(tasks), WARM_BATCH):
                    self._embed(project, tasks[start:start + WARM_BATCH], target, embedder, count=False)
            except Exception as exc:  # best effort, like warming: predict embeds whatever is missing
                log.warning("project %s: embedding %d new tasks failed (%s: %s)", project, len(tasks),
                            type(exc).__name__, exc)

        threading.Thread(target=run, name=f"labelloop-new-tasks-{project}", daemon=True).start()
        return len(tasks)

    def _update(self, project: str, **values: Any) -> None:
        with self._lock:
            self._status[project].update(values)

    def _run(self, project: str) -> None:
        runtime = self.runtime
        lock = FileLock(str(runtime.store.model_dir / "locks" / f"warm-{_safe_name(project)}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            self._update(project, state="skipped", detail="another worker process is warming this project")
            return
        try:
            stored = runtime.store.get_project(project)
            target = parse_label_config(stored.label_config)
            embedder = runtime.embedders.get(stored.embedder)
            if stored.embedder_id is None:
                runtime.store.set_embedder_id(project, embedder.id)
            batch: list[dict[str, Any]] = []
            for task in runtime.ls.iter_tasks(project):
                batch.append(task)
                if len(batch) >= WARM_BATCH:
                    self._embed(project, batch, target, embedder)
                    batch = []
            if batch:
                self._embed(project, batch, target, embedder)
            self._update(project, state="done", finished_at=time.time())
            log.info("project %s: cache warm (%s)", project, self.status(project))
        except (LabelConfigError, Exception) as exc:  # warming is best effort; predict still works without it
            log.warning("project %s: warming the embedding cache failed (%s: %s)", project,
                        type(exc).__name__, exc)
            self._update(project, state="failed", detail=f"{type(exc).__name__}: {exc}")
        finally:
            lock.release()

    def _embed(self, project: str, tasks: list[dict[str, Any]], target, embedder, count: bool = True) -> None:
        runtime = self.runtime
        result = embed_tasks(project, tasks, target.data_key, embedder, store=runtime.store, cache=runtime.cache,
                             media=runtime.media, threads=runtime.settings.threads,
                             batch_size=runtime.settings.embed_batch_size,
                             compute_lock=runtime.embedders.compute_locks.get(embedder.id))
        if not count:
            return
        with self._lock:
            entry = self._status[project]
            entry["tasks"] += len(tasks)
            entry["embedded"] += int(result.ok.sum())
            entry["failed"] += len(result.errors)


class Runtime:
    """Settings, store, embedding cache, embedders, heads, media, Label Studio client and training queue."""

    def __init__(self, settings: Settings, embedder_loader: Callable[[str], Any] | None = None,
                 http_client: httpx.Client | None = None, vlm_loader: Callable[[str], Any] | None = None):
        from labelers.cache import EmbeddingCache

        self.settings = settings
        self.store = Store(settings.model_dir)
        (self.store.model_dir / "locks").mkdir(exist_ok=True)
        self.cache = EmbeddingCache(self.store.model_dir / "embeddings.sqlite3")
        self.http = http_client or httpx.Client(verify=settings.verify_ssl, timeout=settings.fetch_timeout_seconds)
        self.auth = LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key, self.http)
        self.media = MediaResolver(settings, self.auth, self.http)
        self.embedders = EmbedderPool(embedder_loader)
        self.default_spec = resolve_spec(settings.embedder)
        self.heads = HeadCache()
        self.vlm_settings = _vlm_settings(settings)
        self.vlms = VLMPool(settings, vlm_loader)  # loaded on a VLM project's first /predict, never before
        self.ls = LabelStudioClient(settings)
        self.version_sync = VersionSync(self.store, self.ls, enabled=settings.sync_project_version,
                                        version_of=self.served_version)
        self.queue = TrainingQueue(self.store, self._train, settings.retrain_debounce_seconds)
        self.warmer = CacheWarmer(self)
        self.counters = Counters()
        self._warned: set[str] = set()
        self.started_at = time.time()
        desc = describe_spec(self.default_spec)
        log.info("embedder %s -> %s (%s)", settings.embedder, self.default_spec,
                 "CLIP, zero-shot before the first annotation" if desc["zero_shot"]
                 else "EfficientNet-Lite0 fallback: image-only, uniform prior until the first annotations")

    def model(self, project: str, label_config: str | None = None,
              extra_params: dict[str, Any] | None = None):
        """Return a LabelloopModel for `project` (cheap; shares this runtime's loaded objects)."""
        from backend.model import LabelloopModel

        return LabelloopModel(project, label_config=label_config, runtime=self, extra_params=extra_params)

    def served_version(self, project: str) -> str | None:
        """Return the version a project's predictions carry (its head's, or its VLM's); None if unknown."""
        if self.store.get_project(project) is None:
            return None
        try:
            return self.model(project).model_version
        except LabelConfigError:  # a config we cannot serve still has its head's version
            return self.store.current_version(project)

    def _train(self, project: str, full_sync: bool, reasons: set) -> tuple:
        return self.model(project).train(full_sync=full_sync)

    def start(self, preload: bool = True) -> None:
        """Start the training worker and, optionally, load the default embedder in the background."""
        self.queue.start()
        if preload:
            threading.Thread(target=self._preload, name="labelloop-preload", daemon=True).start()

    def _preload(self) -> None:
        try:
            self.embedders.get(self.default_spec)
        except Exception as exc:  # reported by /health and by the first /predict
            log.error("could not load embedder %s: %s", self.default_spec, exc)

    def close(self) -> None:
        self.queue.stop()
        self.version_sync.stop()
        self.http.close()
        self.store.close()

    def warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def embedder_status(self) -> dict[str, Any]:
        """Return what /health says about the default embedder (never loads it)."""
        status = describe_spec(self.default_spec)
        status["configured"] = self.settings.embedder
        loaded = self.embedders.loaded(self.default_spec)
        status["loaded"] = loaded is not None
        if loaded is not None:
            status["id"] = loaded.id
        error = self.embedders.error(self.default_spec)
        if error:
            status["error"] = error
        return status
