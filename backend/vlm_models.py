"""The VLMs a backend process has loaded: the one load-once cache for VLMs, bounded (least recently used goes).

Loaded lazily on a VLM project's first /predict (never in /setup); only names the operator configured reach
here (backend.predictor checks extra_params first).
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from backend.config import Settings
from backend.loading import LoadOncePool

log = logging.getLogger(__name__)

MAX_LOADED_VLMS = 2  # a 7B VLM is several GB: a worker keeps at most this many


class VLMUnavailable(RuntimeError):
    """The project's VLM cannot be loaded here (answered as 503; visible in /health and /metrics)."""


class VLMPool(LoadOncePool):
    """VLM labelers loaded once per process, at most `capacity` at a time; one forward pass per model at a time."""

    kind = "VLM"

    def __init__(self, settings: Settings, vlm_settings, loader=None, capacity: int = MAX_LOADED_VLMS):
        super().__init__(loader, capacity)
        self.settings, self.vlm_settings = settings, vlm_settings
        self.compute_locks: dict[str, threading.Lock] = {}

    def _load(self, spec: str):
        from labelers.vlm.labeler import VLMLabeler

        try:
            return VLMLabeler.from_pretrained(spec, self.vlm_settings, device=self.settings.vlm_device,
                                              dtype=self.settings.vlm_dtype)
        except Exception as exc:  # missing weights, no network, no chat template: one clear message
            raise VLMUnavailable(f"cannot load VLM {spec!r} ({type(exc).__name__}: {exc})") from None

    def _unavailable(self, message: str) -> Exception:
        return VLMUnavailable(f"{message} (not retried for a minute)")

    def _ready(self, spec: str, labeler) -> None:
        self.compute_locks.setdefault(spec, threading.Lock())
        log.info("VLM %s ready: %s", spec, getattr(labeler, "model_id", spec))

    def status(self) -> dict[str, Any]:
        """Return what /health and /metrics say about VLMs (never loads one)."""
        loaded = set(self.loaded_specs())
        specs = sorted(loaded | set(self._errors) | {self.settings.vlm_model})
        return {"predictor": self.settings.predictor, "model": self.settings.vlm_model,
                "max_loaded": self.capacity,
                "models": {spec: {"loaded": spec in loaded, "error": self._errors.get(spec)} for spec in specs}}
