"""Heavy models loaded at most once per process, on first use, with failed loads retried at most once a minute.

With a `capacity`, the pool keeps at most that many models: loading one more evicts the least recently used
(a request still holding it finishes; the memory goes when it does).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
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

    def __init__(self, loader: Callable[[str], Any] | None = None, capacity: int | None = None):
        if capacity is not None and capacity < 1:
            raise ValueError(f"{self.kind} pool capacity must be at least 1, got {capacity}")
        self._loader = loader
        self.capacity = capacity
        self._objects: OrderedDict[str, Any] = OrderedDict()
        self._errors: dict[str, str] = {}
        self._failed_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._spec_locks: dict[str, threading.Lock] = {}
        self.loads = 0  # how many loads ran (tests check a model is loaded once, and again after eviction)

    def _load(self, spec: str) -> Any:
        raise NotImplementedError

    def _unavailable(self, message: str) -> Exception:
        return RuntimeError(message)

    def _ready(self, spec: str, obj: Any) -> None:
        """Hook called once per loaded object, before it is shared."""

    def _evicted(self, spec: str, obj: Any) -> None:
        """Hook called when `spec` leaves the pool to make room."""

    def get(self, spec: str) -> Any:
        """Return the loaded object for `spec`. The first failure raises the loader's own exception; later
        calls within the retry window raise `_unavailable(<that error>)`."""
        with self._lock:
            if spec in self._objects:
                self._objects.move_to_end(spec)
                return self._objects[spec]
            spec_lock = self._spec_locks.setdefault(spec, threading.Lock())
        with spec_lock:
            with self._lock:
                if spec in self._objects:
                    return self._objects[spec]
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
                self.loads += 1
                self._objects[spec] = obj
                self._errors.pop(spec, None)
                evicted = []
                while self.capacity is not None and len(self._objects) > self.capacity:
                    evicted.append(self._objects.popitem(last=False))
            for old_spec, old in evicted:
                log.info("%s %s unloaded to make room for %s (at most %d loaded)", self.kind, old_spec, spec,
                         self.capacity)
                self._evicted(old_spec, old)
            return obj

    def loaded(self, spec: str) -> Any:
        """Return the object if already loaded, else None (never loads)."""
        with self._lock:
            return self._objects.get(spec)

    def loaded_specs(self) -> list[str]:
        """Return the loaded specs, least recently used first."""
        with self._lock:
            return list(self._objects)

    def error(self, spec: str) -> str | None:
        """Return the last load error of `spec`, or None."""
        return self._errors.get(spec)
