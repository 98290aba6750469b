"""Heavy models loaded at most once per process, on first use, with failed loads retried at most once a minute."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

RETRY_AFTER_FAILURE = 60.0  # seconds before a failed load is attempted again


class LoadOncePool:
    """spec -> loaded object, thread-safe; concurrent first calls for one spec load it once.

    Subclasses say how to load (`_load`), what to raise while a failed load is not retried yet
    (`_unavailable`), and what to do once an object is ready (`_ready`). A failed load is not retried for
    RETRY_AFTER_FAILURE seconds, so a missing download (no network) does not stall every request.
    """

    kind = "model"

    def __init__(self, loader: Callable[[str], Any] | None = None):
        self._loader = loader
        self._objects: dict[str, Any] = {}
        self._errors: dict[str, str] = {}
        self._failed_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._spec_locks: dict[str, threading.Lock] = {}

    def _load(self, spec: str) -> Any:
        raise NotImplementedError

    def _unavailable(self, message: str) -> Exception:
        return RuntimeError(message)

    def _ready(self, spec: str, obj: Any) -> None:
        """Hook called once per loaded object, before it is shared."""

    def get(self, spec: str) -> Any:
        """Return the loaded object for `spec`. The first failure raises the loader's own exception; later
        calls within the retry window raise `_unavailable(<that error>)`."""
        with self._lock:
            if spec in self._objects:
                return self._objects[spec]
            spec_lock = self._spec_locks.setdefault(spec, threading.Lock())
        with spec_lock:
            if spec not in self._objects:
                failed_at = self._failed_at.get(spec)
                if failed_at is not None and time.monotonic() - failed_at < RETRY_AFTER_FAILURE:
                    raise self._unavailable(self._errors[spec])
                log.info("loading %s %s", self.kind, spec)
                try:
                    obj = self._loader(spec) if self._loader is not None else self._load(spec)
                except Exception as exc:
                    self._errors[spec] = f"{type(exc).__name__}: {exc}"
                    self._failed_at[spec] = time.monotonic()
                    raise
                self._ready(spec, obj)
                with self._lock:
                    self._objects[spec] = obj
                    self._errors.pop(spec, None)
        return self._objects[spec]

    def loaded(self, spec: str) -> Any:
        """Return the object if already loaded, else None (never loads)."""
        return self._objects.get(spec)

    def error(self, spec: str) -> str | None:
        """Return the last load error of `spec`, or None."""
        return self._errors.get(spec)
