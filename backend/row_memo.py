"""Rows computed once per content key and then read: what /predict would otherwise recompute for an image it
has seen (the ImageNet prior's probabilities, backend.prior_cache; the label spreading row of a task outside
the graph, backend.learners.PoolScores). Bounded: past `max_rows` it starts over (logged)."""
from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


class RowMemo:
    """{content key: row (K,)}; thread-safe. `rows` reads the known keys and computes the others at once."""

    def __init__(self, max_rows: int, what: str):
        self.max_rows, self.what = max_rows, what
        self._rows: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key) -> bool:
        return key in self._rows

    def __iter__(self):
        with self._lock:
            return iter(list(self._rows))

    def __getitem__(self, key: str) -> np.ndarray:
        return self._rows[key]

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

    def missing(self, keys: Sequence[str | None]) -> list[str | None]:
        """Return the keys among `keys` without a row (a None key never has one)."""
        with self._lock:
            return [key for key in keys if key is None or key not in self._rows]

    def rows(self, keys: Sequence[str | None], compute: Callable[[list[int]], np.ndarray]) -> tuple[list, int]:
        """Return (the row of every key, in order; how many were computed). The rows of unknown keys come from
        one `compute(positions)` call (positions into `keys`) and are kept, except for None keys."""
        with self._lock:
            found = [self._rows.get(key) if key is not None else None for key in keys]
        todo = [i for i, row in enumerate(found) if row is None]
        if todo:
            fresh = compute(todo)
            with self._lock:
                if len(self._rows) + len(todo) > self.max_rows:
                    log.info("%s: %d kept, more than %d with %d new: starting over", self.what, len(self._rows),
                             self.max_rows, len(todo))
                    self._rows.clear()
                for j, i in enumerate(todo):
                    found[i] = fresh[j]
                    if keys[i] is not None:
                        self._rows[keys[i]] = fresh[j]
        return found, len(todo)
