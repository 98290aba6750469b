"""Task images decoded for the pre-annotators that look inside an image (relabel regions, box proposals).

The classification path never needs the pixels once an image is embedded; these do, so they fetch through the
process's shared Fetcher, within the predict budget, and decode each image once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.embedding import fetch_deadline
from backend.fetching import Fetcher


@dataclass
class TaskImages:
    """Decoded images by task row; `errors` (row -> why) and `not_reached` (rows past the budget) say the rest."""

    ids: list[int | None]
    images: dict[int, Any] = field(default_factory=dict)   # row -> PIL RGB image
    keys: dict[int, str] = field(default_factory=dict)     # row -> content key of the image bytes
    errors: dict[int, str] = field(default_factory=dict)
    not_reached: list[int] = field(default_factory=list)
    fetched: int = 0


def load_task_images(fetcher: Fetcher, tasks: list[dict[str, Any]], data_key: str, budget: float | None = None,
                     fetch_timeout: float = 20.0) -> TaskImages:
    """Return the tasks' images (`task["data"][data_key]`). One unreadable image never sinks the batch: it gets
    an error message. With a `budget` (seconds), no download starts after `fetch_deadline(...)`."""
    from labelers.cache import content_key
    from labelers.images import ImageLoadError, load_image

    deadline = None if budget is None else fetch_deadline(fetcher.clock(), budget, fetch_timeout)
    ids, urls, errors = fetcher.media.task_sources(tasks, data_key)
    out = TaskImages(ids=ids, errors=errors)
    todo = [i for i in range(len(tasks)) if i not in errors]
    got = fetcher.fetch_all({i: urls[i] for i in todo}, {i: ids[i] for i in todo}, deadline)
    out.errors.update(got.errors)
    out.not_reached = sorted(got.not_started)
    out.fetched = len(got.blobs)
    for i in sorted(got.blobs):
        try:
            out.images[i] = load_image(got.blobs[i], name=f"task {ids[i]}")
            out.keys[i] = content_key(got.blobs[i])
        except ImageLoadError as exc:
            out.errors[i] = str(exc)
    return out
