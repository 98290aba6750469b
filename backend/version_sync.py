"""Keeps each project's model_version in Label Studio equal to the version we serve.

Label Studio 1.23 refuses a project version that has no predictions stored ("Model version doesn't exist
either as live model or as static predictions", HTTP 400). So the switch is asked for only once predictions
of the served version are known to exist: after the backend pushed them (LABELLOOP_PUSH_PREDICTIONS), or
after a /predict answered with them (Retrieve Predictions, an annotator opening a task). The version whose
predictions exist is remembered in SQLite (PREDICTED_KEY), so every worker process agrees. Label Studio
stores a /predict answer only after receiving it (for a few hundred tasks, seconds later), hence the first
attempt waits `delays[0]` seconds, and each attempt first asks Label Studio which versions have stored
predictions (GET /api/projects/{id}/model-versions/): the update is sent only once ours is listed, so it
is never refused; further attempts back off (tenacity). The first success ends them, and a refused API key (401/403) ends them at once:
it is not transient. The last version set is remembered in the project's key-value state.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from tenacity import Retrying, retry_if_result, stop_after_attempt, stop_when_event_set, wait_chain, wait_fixed

from backend.ls_client import LabelStudioClient, LabelStudioRejected

log = logging.getLogger(__name__)

STATE_KEY = "labelloop.label_studio_model_version"
PREDICTED_KEY = "labelloop.version_with_predictions"  # the newest version Label Studio has predictions of


class VersionSync:
    """`schedule(project)` after a publish or a /predict; `attempt(project)` tries once, now."""

    STATE_KEY = STATE_KEY

    def __init__(self, store, client: LabelStudioClient, version_of: Callable[[str], str | None],
                 enabled: bool = True, delays: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0)):
        self.store, self.client = store, client
        self.version_of = version_of  # the version the project's predictions carry (head or VLM)
        self.enabled = enabled and client.configured
        self.delays = delays
        self._stop = threading.Event()
        self._active: set[str] = set()
        self._again: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="labelloop-version-sync")

    def predictions_stored(self, project: str, version: str | None, now: bool = False) -> None:
        """Record that Label Studio has (or is about to store) predictions of `version`, then switch the
        project to it: at once with `now` (after a push, which Label Studio has confirmed), else planned."""
        if not version or version != self.version_of(project):  # an older version's answer changes nothing
            return
        if self.store.kv_get(project, PREDICTED_KEY) != version:  # one write per version, not per /predict
            self.store.kv_set(project, PREDICTED_KEY, version)
        if not self.enabled:
            return
        if now:
            try:
                self.attempt(project)
            except LabelStudioRejected:  # said once by the client
                pass
        else:
            self.schedule(project)

    def schedule(self, project: str) -> None:
        """Plan sync attempts for `project` (no-op when Label Studio is not configured, already in step, or has
        no predictions of the served version yet: it would refuse the update)."""
        if not self.enabled or self._stop.is_set() or self._in_step(project) or not self._predicted(project):
            return
        with self._lock:
            if project in self._active:  # the running attempts read the newest version; start over after
                self._again.add(project)
                return
            self._active.add(project)
        self._pool.submit(self._run, project)

    def attempt(self, project: str) -> bool:
        """Try once; returns True when Label Studio now has our current version. Raises LabelStudioRejected
        when Label Studio refuses the API key."""
        current = self.version_of(project)
        if current is None or self.store.kv_get(project, STATE_KEY) == current:
            return True
        if self.store.kv_get(project, PREDICTED_KEY) != current:
            return False  # Label Studio would refuse it; the next predict or push of `current` asks again
        if not self.client.has_predictions_of(project, current):
            # Label Studio has not stored the /predict answer yet: asking now would be refused (HTTP 400)
            log.debug("project %s: no stored predictions of %s in Label Studio yet", project, current)
            return False
        if self.client.set_project_version(project, current):
            self.store.kv_set(project, STATE_KEY, current)
            log.info("project %s: Label Studio's model_version is now %s", project, current)
            return True
        return False

    def stop(self) -> None:
        """Cancel planned attempts and wait for one in flight (bounded by the HTTP timeout): the HTTP client
        it uses is closed right after."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _predicted(self, project: str) -> bool:
        return self.store.kv_get(project, PREDICTED_KEY) == self.version_of(project)

    def _in_step(self, project: str) -> bool:
        current = self.version_of(project)
        return current is None or self.store.kv_get(project, STATE_KEY) == current

    def _run(self, project: str) -> None:
        while True:
            retrying = Retrying(wait=wait_chain(*(wait_fixed(d) for d in self.delays[1:]), wait_fixed(0)),
                                stop=stop_after_attempt(len(self.delays)) | stop_when_event_set(self._stop),
                                retry=retry_if_result(lambda done: done is False), sleep=self._stop.wait,
                                retry_error_callback=lambda state: False, reraise=True)
            try:
                if self.delays and self.delays[0] > 0:
                    self._stop.wait(self.delays[0])
                retrying(self.attempt, project)
            except LabelStudioRejected as exc:  # said once by the client; retrying cannot help
                log.debug("project %s: model_version sync stopped: %s", project, exc)
            except Exception as exc:  # the store or SDK failing must not kill the sync worker
                log.warning("project %s: model_version sync failed (%s)", project, type(exc).__name__)
            with self._lock:
                if project not in self._again or self._stop.is_set():
                    self._active.discard(project)
                    self._again.discard(project)
                    return
                self._again.discard(project)
