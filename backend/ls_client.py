"""The few Label Studio API calls the backend makes, through label-studio-sdk 2.x.

Authentication is backend.ls_auth's (legacy tokens and PATs), carried by the shared httpx client; the SDK
only builds requests. Transient failures (connection errors, timeouts, 429, 5xx) are retried with tenacity;
401/403 are not transient and raise LabelStudioRejected at once.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterator

import httpx
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from backend.config import Settings
from backend.logs import Redactor

log = logging.getLogger(__name__)

# The SDK insists on an API key and would refresh a PAT itself. It gets this placeholder instead: its
# Authorization header is replaced on every request by LabelStudioAuth (the httpx client's auth), so Label
# Studio tokens are handled in one place.
SDK_KEY_PLACEHOLDER = "labelloop-auth-by-httpx"
NO_SDK_RETRIES = {"max_retries": 0}  # tenacity retries below; the SDK's own retries would multiply them


class LabelStudioRejected(RuntimeError):
    """Label Studio answered 401/403: the API key is wrong or lacks permission; retrying cannot help."""


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if status is None and isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
    return status


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: no connection, a timeout, 408/429 or a 5xx answer."""
    if isinstance(exc, httpx.TransportError):
        return True
    status = _status(exc)
    return status is not None and (status in (408, 429) or status >= 500)


_retry_transient = retry(retry=retry_if_exception(is_transient), stop=stop_after_attempt(3),
                         wait=wait_exponential(multiplier=0.5, max=4), reraise=True)


def _as_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    for attr in ("model_dump", "dict"):
        if hasattr(item, attr):
            return getattr(item, attr)()
    return dict(item)


class LabelStudioClient:
    """Lists tasks, stores predictions, keeps a Data Manager view and sets the project's model_version. Needs LABEL_STUDIO_URL +
    LABEL_STUDIO_API_KEY (`configured`)."""

    def __init__(self, settings: Settings, http: httpx.Client, redactor: Redactor | None = None):
        self.settings = settings
        self.http = http
        self.redactor = redactor or Redactor()
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
                from label_studio_sdk.client import LabelStudio

                self._sdk = LabelStudio(base_url=self.settings.label_studio_url, api_key=SDK_KEY_PLACEHOLDER,
                                        httpx_client=self.http)
        return self._sdk

    def iter_tasks(self, project: str, on_total: Callable[[int | None], None] | None = None
                   ) -> Iterator[dict[str, Any]]:
        """Yield every task of `project` as a dict (id, data, annotations, ...). The first page is retried
        when the failure is transient; raises LabelStudioRejected on 401/403. `on_total` is called once with
        Label Studio's task count from the first page (None when the answer lacks it)."""
        pager = self._call(self._first_page, project)
        if on_total is not None:
            total = getattr(getattr(pager, "response", None), "total", None)
            on_total(total if isinstance(total, int) else None)
        for task in pager:
            yield _as_dict(task)

    def import_predictions(self, project: str, predictions: list[dict[str, Any]]) -> None:
        """Store predictions ({"task", "result", "score", "model_version"}) in Label Studio in one call."""
        self._call(lambda: self.sdk().projects.import_predictions(id=int(project), request=predictions,
                                                                  request_options=NO_SDK_RETRIES))

    def upsert_view(self, project: str, title: str, filters: dict[str, Any], view_id: int | None = None) -> int:
        """Create or update the project's Data Manager view `title` so it shows the tasks `filters` selects;
        returns its id. `view_id` (remembered from an earlier call) is updated when it still exists; otherwise
        a view with this title is looked up and updated, so the view is never duplicated. Raises on Label
        Studio errors (LabelStudioRejected on 401/403)."""
        data = {"title": title, "filters": filters}
        views = self.sdk().views
        if view_id is None:
            found = self._call(lambda: views.list(project=int(project), request_options=NO_SDK_RETRIES))
            view_id = next((int(v.id) for v in found if ((v.data or {}).get("title") == title)), None)
        if view_id is not None:
            try:
                self._call(lambda: views.update(id=str(view_id), project=int(project), data=data,
                                                request_options=NO_SDK_RETRIES))
                return int(view_id)
            except Exception as exc:
                if _status(exc) != 404:  # deleted in Label Studio since: create it again below
                    raise
        created = self._call(lambda: views.create(project=int(project), data=data, request_options=NO_SDK_RETRIES))
        return int(created.id)

    def set_project_version(self, project: str, model_version: str) -> bool:
        """Set the project's model_version so Label Studio's score column and sort use our newest predictions.

        Returns False when Label Studio does not take it yet: it refuses a version that has no predictions
        stored ("doesn't exist either as live model or as static predictions"), so callers retry after a
        predict; also False while it is unreachable. Raises LabelStudioRejected on 401/403.
        """
        try:
            self._call(lambda: self.sdk().projects.update(id=int(project), model_version=model_version,
                                                          request_options=NO_SDK_RETRIES))
            return True
        except LabelStudioRejected:
            raise
        except Exception as exc:  # network, validation: "not synced yet", never a reason to fail training
            log.info("project %s: Label Studio did not take model_version %s yet (%s)", project, model_version,
                     self.redactor.error(exc))
            return False

    def has_predictions_of(self, project: str, model_version: str) -> bool:
        """True when Label Studio lists stored predictions of `model_version` for the project (GET
        /api/projects/{id}/model-versions/), so it will take that version; also True when the list cannot be
        read (an older Label Studio: the update itself is then the test). Raises LabelStudioRejected on
        401/403."""
        url = f"{self.settings.label_studio_url.rstrip('/')}/api/projects/{int(project)}/model-versions/"
        try:
            response = self._call(lambda: self.http.get(url, timeout=10.0))
        except LabelStudioRejected:
            raise
        except Exception:  # unreachable: the update attempt that follows says so
            return True
        if response.status_code in (401, 403):
            raise LabelStudioRejected(f"Label Studio refused LABEL_STUDIO_API_KEY (HTTP {response.status_code})")
        try:
            counts = response.json() if response.status_code == 200 else None
        except ValueError:
            counts = None
        if not isinstance(counts, dict):
            return True
        return bool(counts.get(model_version))

    def _first_page(self, project: str):
        return self.sdk().tasks.list(project=int(project), fields="all", request_options=NO_SDK_RETRIES)

    def _call(self, fn, *args):
        """Run `fn` with tenacity retries of transient failures; 401/403 become LabelStudioRejected."""
        try:
            return _retry_transient(fn)(*args)
        except Exception as exc:
            if _status(exc) in (401, 403):
                raise LabelStudioRejected(f"Label Studio refused LABEL_STUDIO_API_KEY (HTTP {_status(exc)})") \
                    from None
            raise
