"""Task images fetched through one bounded pool per process, never past a deadline.

Every caller (/predict, training, background warm-up, VLM pre-annotation) shares one thread pool of `threads`
workers, so ten TASKS_CREATED events do not start ten pools. A fetch checks the deadline when it *starts*:
once the deadline has passed, no new download begins, and the rows not reached are reported as not started.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from backend.media import MediaError, MediaResolver


@dataclass
class Fetched:
    """What one `fetch_all` call got: row -> bytes, row -> error message, and the rows never started."""

    blobs: dict[int, bytes] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    not_started: list[int] = field(default_factory=list)


class Fetcher:
    """Fetches task images in parallel through a shared, bounded pool; thread-safe."""

    def __init__(self, media: MediaResolver, threads: int, clock: Callable[[], float] = time.monotonic):
        self.media = media
        self.clock = clock  # tests pass a fake clock to count fetches without timing anything
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="labelloop-fetch")

    def fetch_all(self, urls: dict[int, str], ids: dict[int, int | None], deadline: float | None = None) -> Fetched:
        """Fetch `urls` (row -> url). Never raises for one bad image: a MediaError becomes that row's error.
        With `deadline` (on `self.clock`), a fetch that would start after it is skipped and listed in
        `not_started`."""
        def one(i: int) -> tuple[int, bytes | None, str | None, bool]:
            if deadline is not None and self.clock() >= deadline:
                return i, None, None, False
            try:
                return i, self.media.fetch(urls[i], ids.get(i)), None, True
            except MediaError as exc:
                return i, None, str(exc), True

        out = Fetched()
        for i, blob, error, started in self._pool.map(one, sorted(urls)):
            if not started:
                out.not_started.append(i)
            elif error is not None:
                out.errors[i] = error
            else:
                out.blobs[i] = blob
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
