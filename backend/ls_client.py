"""The few Label Studio API calls the backend makes, through label-studio-sdk 2.x (legacy tokens and PATs)."""
from __future__ import annotations

import logging
import threading
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

    def set_project_version(self, project: str, model_version: str) -> bool:
        """Set the project's model_version so Label Studio's score column and sort use our newest predictions.

        Returns False (and logs) when Label Studio refuses; a retrain is not undone for that.
        """
        try:
            self.sdk().projects.update(id=int(project), model_version=model_version)
            return True
        except Exception as exc:  # network, auth, parsing: all mean "not synced", none should fail training
            log.warning("project %s: could not set Label Studio's model_version to %s (%s: %s)",
                        project, model_version, type(exc).__name__, exc)
            return False
