"""The HTTP face of the backend: the routes Label Studio 1.2x calls, with validated bodies and JSON errors.

Served by uvicorn (`labelloop serve`); `create_app()` with no arguments reads settings from the environment,
which is how every uvicorn worker process builds its own app and runtime.
"""
from __future__ import annotations

import logging
import os
import secrets
import sqlite3
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.config import Settings, load_settings, startup_warnings
from backend.labels import LabelConfigError
from backend.learners import learner_status
from backend.events import TRAIN_EVENTS
from backend.heap import enable_freezing, freeze_long_lived
from backend.embedding import EmbedderMismatch
from backend.model import EventError, LabelloopModel
from backend.runtime import Runtime
from backend.version_sync import STATE_KEY
from backend.vlm_models import VLMUnavailable
from backend.suspects import metrics_view
from backend.schemas import (ErrorResponse, PayloadError, PredictRequest, PredictResponse, SetupRequest, SetupResponse,
                             WebhookEvent, project_id)

log = logging.getLogger("backend.app")

WEBHOOK_SECRET_HEADER = "X-Labelloop-Secret"
SECRET_QUERY_KEYS = frozenset({"token", "secret", "api_key", "apikey", "key", "access_token", "password"})
LEGACY_ROUTES = ("/train", "/validate", "/duplicate_model", "/delete", "/job_status")
KNOWN_ACTIONS = frozenset(TRAIN_EVENTS + (
    "PROJECT_CREATED", "PROJECT_UPDATED", "PROJECT_DELETED", "TASKS_CREATED", "TASKS_DELETED", "ANNOTATION_DELETED",
    "LABEL_LINK_CREATED", "LABEL_LINK_UPDATED", "LABEL_LINK_DELETED", "REVIEW_CREATED", "REVIEW_UPDATED",
    "REVIEWS_DELETED"))


class ApiError(Exception):
    """An error answered as JSON {"detail": message, "status": code}."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "status": status}, status_code=status, headers=headers)


class BodySizeLimit:
    """ASGI middleware: refuse request bodies larger than `limit` bytes with 413, declared or streamed.

    A streamed body that grows past the limit is answered with 413 at once; the app then sees a client
    disconnect and whatever it tries to send afterwards is dropped.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def _too_large(self) -> JSONResponse:
        return _error(413, f"request body over the {self.limit}-byte limit (LABELLOOP_MAX_REQUEST_BYTES)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return await self._too_large()(scope, receive, send)
        seen, started, rejected = 0, False, False

        async def counted_receive():
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    rejected = True
                    if not started:
                        await self._too_large()(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message):
            nonlocal started
            if rejected:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted_receive, tracked_send)


# Credentials are parsed by FastAPI's HTTPBasic; a malformed "Basic ..." header is answered 401 by it.
basic_credentials = HTTPBasic(realm="labelloop", auto_error=False)
BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="labelloop"'}


def _basic_ok(credentials: HTTPBasicCredentials | None, settings: Settings) -> bool:
    """True when `credentials` are BASIC_AUTH_USER/PASS, compared in constant time (both always compared)."""
    if credentials is None:
        return False
    user_ok = secrets.compare_digest(credentials.username.encode(), settings.basic_auth_user.encode())
    pass_ok = secrets.compare_digest(credentials.password.encode(), settings.basic_auth_pass.encode())
    return user_ok and pass_ok


def _check_auth(request: Request, credentials: HTTPBasicCredentials | None) -> None:
    settings: Settings = request.app.state.runtime.settings
    if settings.basic_auth_enabled and not _basic_ok(credentials, settings):
        raise ApiError(401, "authentication required", BASIC_CHALLENGE)


# The auth dependencies are `async def` although they never await: FastAPI runs a plain `def` dependency in
# its thread pool, one more hop per request through the event loop (and the GIL, against 8 concurrent
# /predict requests) for a comparison of two strings.
async def require_auth(request: Request,
                       credentials: HTTPBasicCredentials | None = Depends(basic_credentials)) -> None:
    """Basic auth on every route when BASIC_AUTH_USER/PASS are set; raises ApiError 401 otherwise."""
    _check_auth(request, credentials)


async def require_webhook_auth(request: Request,
                               credentials: HTTPBasicCredentials | None = Depends(basic_credentials)) -> None:
    """/webhook: basic auth, or the shared secret in the X-Labelloop-Secret header when one is set.

    Label Studio's auto-created webhook sends no auth: set LABELLOOP_WEBHOOK_SECRET and add the header to that
    webhook; see docs/backend.md. The secret is never taken from the URL: URLs end up in access logs and
    proxies' logs, so a request offering it as ?token= is refused (and the access log masks it).
    """
    settings: Settings = request.app.state.runtime.settings
    secret = settings.webhook_secret
    if secret:
        if settings.basic_auth_enabled and _basic_ok(credentials, settings):
            return
        if any(key.lower() in SECRET_QUERY_KEYS for key in request.query_params):
            raise ApiError(401, f"the webhook secret is not accepted in the URL; send it in the "
                                f"{WEBHOOK_SECRET_HEADER} header")
        offered = request.headers.get(WEBHOOK_SECRET_HEADER) or ""
        if secrets.compare_digest(offered.encode(), secret.encode()):
            return
        raise ApiError(401, f"webhook needs the shared secret ({WEBHOOK_SECRET_HEADER} header)"
                       + (" or basic auth" if settings.basic_auth_enabled else ""), BASIC_CHALLENGE
                       if settings.basic_auth_enabled else None)
    _check_auth(request, credentials)


class RedactQuerySecrets(logging.Filter):
    """Masks the values of secret-looking query parameters (?token=, ?api_key=, ...) in uvicorn's access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
            record.args = record.args[:2] + (redact_query(record.args[2]),) + record.args[3:]
        return True


def redact_query(path: str) -> str:
    """Return `path` with the values of SECRET_QUERY_KEYS parameters replaced by "***"."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(key.lower() in SECRET_QUERY_KEYS for key, _ in pairs):
        return path
    return base + "?" + urlencode([(k, "***" if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*")


def _install_log_redaction() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactQuerySecrets) for f in access.filters):
        access.addFilter(RedactQuerySecrets())


def _validation_message(exc: RequestValidationError | ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid').removeprefix('Value error, ')}")
    return "invalid request: " + "; ".join(parts)


def _freeze_after_preload(runtime: Runtime) -> None:
    try:
        runtime.embedders.get(runtime.default_spec)  # waits for the preload to finish
    except Exception:  # logged by the preload and reported by /health; nothing new to freeze
        return
    freeze_long_lived("loading the embedder")


def create_app(settings: Settings | None = None, runtime: Runtime | None = None, start: bool = True,
               preload: bool = True, freeze_heap: bool | None = None) -> FastAPI:
    """Return the FastAPI app. Builds a Runtime from `settings` (default: environment) unless one is given.

    `freeze_heap` (default: when the app builds its own runtime, i.e. it is the process's server) freezes the
    long-lived objects for the garbage collector once started (backend.heap).

    Raises StoreError/ConfigError at once for an unusable MODEL_DIR or configuration, so the server never
    starts half-working.
    """
    if freeze_heap is None:
        freeze_heap = runtime is None
    if runtime is None:
        settings = settings or load_settings()
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
        runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if start:
            runtime.start(preload=preload)
        if freeze_heap:  # a served process: full collections skip the long-lived objects (backend.heap)
            enable_freezing()
            freeze_long_lived("start-up", collect=True)
            if start and preload:  # the embedder's objects join them once it is loaded
                runtime.warmer.run_in_background(_freeze_after_preload, runtime)
        yield
        runtime.close()

    # "default" declares our own error body for every error status, replacing FastAPI's HTTPValidationError
    # for 422 (a list of field errors), which _error never sends.
    app = FastAPI(title="labelloop ML backend", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None,
                  responses={"default": {"model": ErrorResponse, "description": "an error, named in detail"}})
    app.state.runtime = runtime
    app.add_middleware(BodySizeLimit, limit=runtime.settings.max_request_bytes)
    _install_log_redaction()
    for warning in startup_warnings(runtime.settings):
        log.warning("SECURITY: %s", warning)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            detail = f"no route {request.url.path}" + (" (legacy route; Label Studio 1.2x does not use it)"
                                                       if request.url.path.rstrip("/") in LEGACY_ROUTES else "")
        if exc.status_code == 401:  # HTTPBasic refusing a malformed Authorization header
            detail = "authentication required (malformed Authorization header)"
        return _error(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _error(422, _validation_message(exc))

    @app.exception_handler(ValidationError)  # a payload checked inside a route (webhook shapes)
    async def _invalid_payload(request: Request, exc: ValidationError):
        return _error(422, _validation_message(exc))

    @app.exception_handler(PayloadError)  # e.g. a project id that is not a whole number
    async def _bad_value(request: Request, exc: PayloadError):
        return _error(422, f"invalid request: {exc}")

    @app.exception_handler(OSError)
    @app.exception_handler(sqlite3.OperationalError)
    async def _storage(request: Request, exc: Exception):
        # 507 Insufficient Storage: the caller (Label Studio's webhook log) sees that nothing was stored, and why.
        if runtime.store.note_disk_full(exc, f"{request.method} {request.url.path}"):
            log.error("%s %s: MODEL_DIR %s is full (%s); nothing was stored", request.method, request.url.path,
                      runtime.store.model_dir, exc)
            return _error(507, f"MODEL_DIR {runtime.store.model_dir} is full ({exc}): nothing was stored; free "
                               "space there and send it again")
        return await _crash(request, exc)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the backend log")

    def health_body() -> dict[str, Any]:
        # Still 200 when degraded: Label Studio only checks the status code, and predictions from cached
        # embeddings keep working; "problems" says what does not (e.g. a refused LABEL_STUDIO_API_KEY).
        problems = runtime.problems()
        return {"status": "DEGRADED" if problems else "UP", "model_class": LabelloopModel.__name__,
                "problems": problems, "embedder": runtime.embedder_status(), "vlm": runtime.vlms.status(),
                "boxes": runtime.suggestions.proposers.status()}

    @app.get("/", dependencies=[Depends(require_auth)])
    def root() -> dict[str, Any]:
        return health_body()

    @app.get("/health", dependencies=[Depends(require_auth)])
    def health() -> dict[str, Any]:
        return health_body()

    @app.post("/setup", response_model=SetupResponse, dependencies=[Depends(require_auth)])
    def setup(body: SetupRequest) -> SetupResponse:
        pid = project_id(body.project)
        if pid is None:
            raise ApiError(422, "invalid request: project: expected '<id>.<timestamp>' or an id")
        model = runtime.model(pid, label_config=body.label_config, extra_params=body.extra_params)
        try:
            return SetupResponse(model_version=model.setup())
        except LabelConfigError as exc:
            raise ApiError(422, f"cannot serve this project: {exc}") from None

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=False,
              dependencies=[Depends(require_auth)])
    def predict(body: PredictRequest) -> Response:
        runtime.counters.add(predict_requests=1)
        pid = project_id(body.project) or project_id(body.tasks[0].get("project"))
        if pid is None:
            raise ApiError(422, "invalid request: no project id in the body or in the tasks")
        model = runtime.model(pid, label_config=body.label_config)
        params = body.params.model_dump() if body.params else {}
        context = params.pop("context", None)
        try:
            response = model.predict(body.tasks, context=context, **params)
        except LabelConfigError as exc:
            raise ApiError(422, f"cannot serve this project: {exc}") from None
        except _embedder_errors() as exc:
            raise ApiError(503, f"embedder unavailable: {exc}") from None
        except EmbedderMismatch as exc:
            raise ApiError(409, str(exc)) from None
        except VLMUnavailable as exc:
            raise ApiError(503, f"VLM unavailable: {exc}") from None
        if len(response.predictions) != len(body.tasks):  # Label Studio would silently store nothing
            raise ApiError(500, f"model returned {len(response.predictions)} predictions for {len(body.tasks)} tasks")
        # Label Studio stores these after we answer; then it accepts their version as the project's.
        stored = [p.model_version for p in response.predictions
                  if not isinstance(p, list) and (p.result or p.score is not None) and p.model_version]
        try:
            runtime.version_sync.predictions_stored(pid, stored[0] if stored else None)
        except (OSError, sqlite3.OperationalError) as exc:  # bookkeeping: never worth the predictions
            if not runtime.store.note_disk_full(exc, "recording the predicted version"):
                raise
            log.warning("project %s: predictions served, but MODEL_DIR is full (%s): Label Studio's project "
                        "version follows once space is back", pid, exc)
        # Serialised here, once, by pydantic: returned as a model, FastAPI would validate it again against
        # response_model (rebuilding every PredictionValue) in one more thread-pool hop, then encode it.
        # response_model stays the documented shape; the bytes are the same JSON.
        return Response(PredictResponse(results=response.predictions).model_dump_json(),
                        media_type="application/json")

    @app.post("/webhook", dependencies=[Depends(require_webhook_auth)])
    def webhook(data: Any = Body(default=None)) -> JSONResponse:
        # A plain (threadpool) function: SQLite writes must never block the event loop.
        if not isinstance(data, dict):
            raise ApiError(400, "webhook body must be a JSON object")
        event = WebhookEvent.model_validate(data) if isinstance(data.get("action"), str) and data["action"] \
            else None
        if event is None:
            raise ApiError(422, "invalid webhook: 'action' (a non-empty string) is required")
        # Count only actions Label Studio defines: the action string comes from the caller.
        known = event.action in KNOWN_ACTIONS
        runtime.counters.add(**{f"webhook_{event.action if known else 'other'}": 1})
        project = data.get("project")
        pid = project_id(project)
        if pid is None:
            annotation = data.get("annotation")
            pid = project_id(annotation.get("project")) if isinstance(annotation, dict) else None
        if pid is None:
            if event.action in LabelloopModel.TRAIN_EVENTS or event.action == "PROJECT_UPDATED":
                raise ApiError(422, f"invalid webhook: {event.action} without project.id")
            return JSONResponse({"status": "ignored", "action": event.action, "project": None,
                                 "detail": "no project"}, status_code=200)
        label_config = project.get("label_config") if isinstance(project, dict) else None
        model = runtime.model(pid, label_config=label_config)
        try:
            outcome = model.fit(event.action, data)
        except EventError as exc:
            raise ApiError(422, f"invalid webhook: {exc}") from None
        except LabelConfigError as exc:
            raise ApiError(422, f"project {pid}: {exc}") from None
        code = 200 if outcome["status"] == "ignored" else 201
        return JSONResponse({"status": outcome["status"], "action": event.action, "project": pid,
                             "detail": outcome.get("detail")}, status_code=code)

    @app.get("/versions", dependencies=[Depends(require_auth)])
    def versions(project: str | None = None) -> dict[str, Any]:
        pid = project_id(project) if project else None
        # Label Studio reads only "versions"; "details" carries each version's estimated accuracy.
        listed = runtime.store.list_versions(pid)
        return {"versions": [v.model_version for v in listed], "details": [version_details(v) for v in listed]}

    @app.get("/metrics", dependencies=[Depends(require_auth)])
    def metrics() -> dict[str, Any]:
        return _metrics(runtime)

    return app


def _embedder_errors() -> tuple[type[BaseException], ...]:
    from labelers.embedders import EmbedderUnavailable

    return (EmbedderUnavailable,)


def _metrics(runtime: Runtime) -> dict[str, Any]:
    """Return training status per project, failures and this worker's counters."""
    store = runtime.store
    projects = {}
    for project in store.list_projects():
        runs = store.runs(project.id, limit=1)
        last = runs[0] if runs else None
        failed = [r for r in store.runs(project.id, limit=50) if r["status"] == "failed"]
        training = store.training_state(project.id).as_dict()  # every worker's, from SQLite
        served = store.get_version(project.id, project.model_version)
        projects[project.id] = {
            "model_version": project.model_version,
            "label_studio_model_version": store.kv_get(project.id, STATE_KEY),
            "accuracy": served.accuracy if served else None,
            "suspects": _suspects_status(runtime, served),
            "embedder": project.embedder,
            "annotations": store.count_annotations(project.id),
            "training": {
                **training,
                "runs": store.run_counts(project.id),
                "last_run": last,
                "last_failure": failed[0] if failed else None,
            },
            "warm_cache": runtime.warmer.status(project.id),
            "predictor": _predictor_status(runtime, project.id),
            "suggestions": runtime.suggestions.ledger.summary(project.id),  # acceptance (backend.acceptance)
            "learner": learner_status(store, project.id),  # head / mix / lp and any fallback (backend.learners)
        }
    return {"worker_pid": os.getpid(), "projects": projects, "vlm": runtime.vlms.status(),
            "counters": runtime.counters.snapshot()}


def version_details(version) -> dict[str, Any]:
    """Return one /versions "details" item: the version, its project, revision, annotations, accuracy and
    suspect-label counts."""
    return {"model_version": version.model_version, "project": version.project, "revision": version.revision,
            "n_annotations": version.n_annotations, "created_at": version.created_at,
            "accuracy": version.accuracy, "suspects": metrics_view(version.audit)}


def _suspects_status(runtime: Runtime, served) -> dict[str, Any] | None:
    """Return the served version's suspect labels for /metrics ({"state": "off"} with LABELLOOP_AUDIT off;
    None before the first audited retrain)."""
    if served is not None and served.audit:
        return metrics_view(served.audit)
    return None if runtime.settings.audit else {"state": "off"}


def _predictor_status(runtime: Runtime, project: str) -> dict[str, Any]:
    """Return {"predictor", "model_version", ...} for /metrics: what pre-annotates the project (never loads)."""
    model = runtime.model(project)
    try:
        choice = model.predictor
    except LabelConfigError as exc:
        return {"predictor": None, "error": str(exc)}
    status: dict[str, Any] = {"predictor": choice.predictor, "model_version": model.model_version}
    if choice.predictor == "vlm":
        status.update(model=choice.model, mode=choice.mode, error=runtime.vlms.error(choice.model))
    return status
