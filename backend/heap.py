"""The garbage collector and the long-lived objects of a served backend.

A started backend holds ~750k objects that live as long as the process (torch, NumPy, FastAPI, the embedder,
WordNet once a prior is built). CPython's full collection walks all of them: ~0.5 s on this 2-core machine,
inside whichever /predict allocated the object that triggered it, while every concurrent request waits on
the GIL. `freeze_long_lived` moves everything alive now into the permanent generation, which the collector
skips; objects created later are collected as before.

Process-wide, so only a served process turns it on (`enable_freezing`, from backend.app.create_app when it
builds its own runtime): a test session creating many apps would otherwise keep every earlier app's garbage.
"""
from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

_enabled = False


def enable_freezing() -> None:
    """Let `freeze_long_lived` freeze (this process serves one app for its whole life)."""
    global _enabled
    _enabled = True


def freeze_long_lived(after: str, collect: bool = False) -> int:
    """Freeze every object alive now (gc.freeze) when freezing is enabled; returns how many are frozen (0 when
    not enabled). `collect`: collect garbage first (a full collection, ~0.5 s holding the GIL: only before
    any request is served). `after` names the step just finished, for the debug log."""
    if not _enabled:
        return 0
    if collect:
        gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("gc: %d long-lived objects frozen after %s", frozen, after)
    return frozen
