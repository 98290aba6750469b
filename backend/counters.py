"""Thread-safe counters for /metrics, one set per worker process."""
from __future__ import annotations

import threading
from collections import Counter


class Counters:
    """Named integer counters (predict_requests, tasks_predicted, ...); `snapshot()` is what /metrics shows."""

    def __init__(self):
        self._counts: Counter = Counter()
        self._lock = threading.Lock()

    def add(self, **amounts: int) -> None:
        with self._lock:
            self._counts.update(amounts)

    def snapshot(self) -> dict[str, int]:
        """Return a copy of every counter."""
        with self._lock:
            return dict(self._counts)
