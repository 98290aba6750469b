"""The few Label Studio API calls the backend makes, through label-studio-sdk 2.x (legacy tokens and PATs)."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator

from backend.config import Settings

log = logging.getLogger(__name__)


def _as_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    for attr in ("model_dump", "dict"):
        if hasattr(item, attr):
            return getattr(item, attr)()
    return dict(item)


class LabelStudioClient:
    """Lists tasks and keeps the project's model_version in step. Needs LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._sdk = None
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return self.settings.label_studio_connected

    def sdk(self):
        """Return the shared `label_studio_sdk.client.LabelStudio`; raises RuntimeError when not configured."""
        if not self.configured:
            raise RuntimeError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are needed to call Label Studio")
        with self._lock:
            if self._sdk is None:
                import httpx
                from label_studio_sdk.client import LabelStudio

                self._sdk = LabelStudio(base_url=self.settings.label_studio_url,
                                        api_key=self.settings.label_studio_api_key,
                                        httpx_client=httpx.Client(verify=self.settings.verify_ssl, timeout=60.0))
        return self._sdk

    def iter_tasks(self, project: str) -> Iterator[dict[str, Any]]:
        """Yield every task of `project` as a dict (id, data, annotations, ...)."""
        for task in self.sdk().tasks.list(project=int(project), fields="all"):
            yield _as_dict(task)

    def import_predictions(self, project: str, predictions: list[dict[str, Any]]) -> None:
        """Store predictions ({"task", "result", "score", "model_version"}) in Label Studio in one call."""
        self.sdk().projects.import_predictions(id=int(project), request=predictions)

    def set_project_version(self, project: str, model_version: str) -> bool:
        """Set the project's model_version so Label Studio's score column and sort use our newest predictions.

        Returns False when Label Studio refuses. It refuses a version that has no predictions stored yet
        ("doesn't exist either as live model or as static predictions"), so callers retry after a predict.
        """
        try:
            self.sdk().projects.update(id=int(project), model_version=model_version)
            return True
        except Exception as exc:  # network, auth, validation: all mean "not synced yet", none may fail training
            status = getattr(exc, "status_code", None)
            body = getattr(exc, "body", None)
            detail = (body.get("validation_errors") or body.get("detail")) if isinstance(body, dict) else None
            # Never log the exception itself: the SDK's message embeds response headers (session cookies).
            log.info("project %s: Label Studio did not take model_version %s yet (%s%s)", project, model_version,
                     f"HTTP {status}" if status else type(exc).__name__, f": {detail}" if detail else "")
            return False


class VersionSync:
    """Keeps each project's model_version in Label Studio equal to the version we serve.

    Label Studio only accepts a version that already has predictions stored, so after a retrain the update
    usually succeeds only once Label Studio has fetched predictions of the new version (Retrieve Predictions,
    or an annotator opening a task). Each `schedule()` therefore plans a few attempts with growing delays;
    the first success ends them. The last version set is remembered in the project's key-value state.
    """

    STATE_KEY = "labelloop.label_studio_model_version"

    def __init__(self, store, client: LabelStudioClient, enabled: bool = True,
                 delays: tuple[float, ...] = (0.0, 1.0, 3.0, 10.0, 30.0), version_of=None):
        self.store, self.client = store, client
        # The version the project's predictions carry: its head's by default, its VLM's for a VLM project.
        self.version_of = version_of or store.current_version
        self.enabled = enabled and client.configured
        self.delays = delays
        self._due: dict[str, list[float]] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False

    def schedule(self, project: str) -> None:
        """Plan sync attempts for `project` (no-op when Label Studio is not configured or already in step)."""
        if not self.enabled:
            return
        current = self.version_of(project)
        if current is None or self.store.kv_get(project, self.STATE_KEY) == current:
            return
        now = time.monotonic()
        with self._cond:
            self._due[project] = [now + d for d in self.delays]
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="labelloop-version-sync", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def attempt(self, project: str) -> bool:
        """Try once; returns True when Label Studio now has our current version."""
        current = self.version_of(project)
        if current is None or self.store.kv_get(project, self.STATE_KEY) == current:
            return True
        if self.client.set_project_version(project, current):
            self.store.kv_set(project, self.STATE_KEY, current)
            log.info("project %s: Label Studio's model_version is now %s", project, current)
            return True
        return False

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop:
                    now = time.monotonic()
                    ready = [p for p, times in self._due.items() if times and times[0] <= now]
                    if ready:
                        break
                    upcoming = [times[0] for times in self._due.values() if times]
                    self._cond.wait(max(0.01, min(upcoming) - now) if upcoming else None)
                if self._stop:
                    return
                for project in ready:
                    self._due[project].pop(0)
            for project in ready:
                try:
                    done = self.attempt(project)
                except Exception as exc:  # the store or SDK failing must not kill the sync thread
                    log.warning("project %s: model_version sync failed (%s)", project, type(exc).__name__)
                    done = False
                if done:
                    with self._cond:
                        self._due.pop(project, None)
