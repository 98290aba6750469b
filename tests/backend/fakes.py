"""Loopback HTTP servers for backend tests: a fake Label Studio and a canary host that records every hit."""
from __future__ import annotations

import base64
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

LEGACY_TOKEN = "test-legacy-token-0123456789"


def make_jwt(claims: dict[str, Any]) -> str:
    """Return an unsigned JWT-shaped token with `claims` (Label Studio's PATs are JWT refresh tokens)."""
    enc = lambda obj: base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")  # noqa: E731
    return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(claims)}.c2lnbmF0dXJl"


class ServerThread:
    """Runs an ASGI app with uvicorn on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app, port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))  # a given port: the same server back after a stop
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(5)
        self.sock.close()


@dataclass
class Canary:
    """Another host (different port) that serves one image and records every request it gets."""

    image: bytes
    hits: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET", "POST"])
        async def anything(path: str, request: Request):
            self.hits.append({"path": "/" + path, "query": str(request.url.query),
                              "authorization": request.headers.get("authorization")})
            if path == "redirect" and request.query_params.get("to"):
                return RedirectResponse(request.query_params["to"], status_code=302)
            return Response(self.image, media_type="image/png")

        return app


@dataclass
class FakeLabelStudio:
    """The slice of Label Studio's API the backend calls, with legacy-token and PAT auth."""

    image: bytes
    tasks: list[dict[str, Any]] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)        # "upload/1/x.png" -> bytes
    old_uploads: dict[str, bytes] = field(default_factory=dict)    # served only under /data/upload/...
    local_files: dict[str, bytes] = field(default_factory=dict)    # "d" value -> bytes
    storage_redirect: str | None = None                             # presign redirects to this base URL
    access_ttl: float = 300.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    refreshes: int = 0
    project_versions: dict[int, str] = field(default_factory=dict)
    pat: str = ""
    access_tokens: set[str] = field(default_factory=set)
    reject_next_bearer: bool = False
    other_legacy_tokens: set[str] = field(default_factory=set)  # accepted too (a key fixed on LS's side)
    # None: accept any model_version; a set: like Label Studio, only versions with stored predictions
    versions_with_predictions: set[str] | None = None
    imported_predictions: list[dict[str, Any]] = field(default_factory=list)
    # answers given by /api/tasks/ before it lists tasks: (status, JSON body, headers), one per call
    task_list_failures: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)

    def __post_init__(self):
        self.pat = make_jwt({"token_type": "refresh", "exp": int(time.time()) + 86400, "jti": "pat"})

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if header == f"Token {LEGACY_TOKEN}" or header.removeprefix("Token ") in self.other_legacy_tokens:
            return True
        if header.startswith("Bearer ") and header[7:] in self.access_tokens:
            if self.reject_next_bearer:  # simulate an access token revoked/expired server-side
                self.reject_next_bearer = False
                self.access_tokens.discard(header[7:])
                return False
            return True
        return False

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def record(request: Request, call_next):
            self.requests.append({"method": request.method, "path": request.url.path,
                                  "query": str(request.url.query),
                                  "authorization": request.headers.get("authorization")})
            if request.url.path != "/api/token/refresh/" and not self._authorized(request):
                return JSONResponse({"detail": "Authentication credentials were not provided."}, status_code=401)
            return await call_next(request)

        @app.post("/api/token/refresh/")
        async def refresh(request: Request):
            body = await request.json()
            if body.get("refresh") != self.pat:
                return JSONResponse({"detail": "Token is invalid"}, status_code=401)
            self.refreshes += 1
            access = make_jwt({"token_type": "access", "exp": time.time() + self.access_ttl,
                               "n": self.refreshes})
            self.access_tokens.add(access)
            return {"access": access}

        @app.get("/api/current-user/whoami")
        async def whoami():
            return {"id": 1, "email": "annotator@example.com"}

        @app.get("/storage-data/uploaded/")
        async def uploaded(filepath: str):
            if filepath in self.uploads:
                return Response(self.uploads[filepath], media_type="image/png")
            return JSONResponse({"detail": "not found"}, status_code=404)

        @app.get("/data/upload/{path:path}")
        async def old_upload(path: str):
            key = "upload/" + path
            if key in self.old_uploads:
                return Response(self.old_uploads[key], media_type="image/png")
            return JSONResponse({"detail": "not found"}, status_code=404)

        @app.get("/data/local-files/")
        async def local_files(d: str):
            if d in self.local_files:
                return Response(self.local_files[d], media_type="image/png")
            return JSONResponse({"detail": "not found"}, status_code=404)

        @app.get("/tasks/{task_id}/presign/")
        async def presign(task_id: int, fileuri: str):
            uri = base64.urlsafe_b64decode(fileuri.encode()).decode()
            key = uri.split("://", 1)[1]
            return RedirectResponse(f"{self.storage_redirect}/{key}?X-Amz-Signature=secret", status_code=303)

        @app.get("/media/{name}")
        async def media(name: str):
            return Response(self.image, media_type="image/png")

        @app.get("/api/tasks/")
        async def list_tasks(project: int, page: int = 1, page_size: int = 100):
            if self.task_list_failures:
                status, body, headers = self.task_list_failures.pop(0)
                return JSONResponse(body, status_code=status, headers=headers)
            mine = [t for t in self.tasks if t.get("project", project) == project]
            start = (page - 1) * page_size
            if start >= len(mine) and page > 1:
                return JSONResponse({"detail": "Invalid page."}, status_code=404)
            return {"tasks": mine[start:start + page_size], "total": len(mine), "total_annotations": 0,
                    "total_predictions": 0}

        @app.post("/api/projects/{pid}/import/predictions")
        async def import_predictions(pid: int, request: Request):
            rows = await request.json()
            self.imported_predictions.extend(rows)
            if self.versions_with_predictions is not None:
                self.versions_with_predictions.update(r["model_version"] for r in rows)
            return {"created": len(rows)}

        @app.get("/api/projects/{pid}/model-versions/")
        async def model_versions(pid: int):
            if self.versions_with_predictions is None:
                return JSONResponse({"detail": "Not found."}, status_code=404)  # as an older Label Studio
            return {version: 1 for version in sorted(self.versions_with_predictions)}

        @app.patch("/api/projects/{pid}/")
        async def update_project(pid: int, request: Request):
            body = await request.json()
            if "model_version" in body:
                known = self.versions_with_predictions
                if known is not None and body["model_version"] not in known:
                    return JSONResponse({"status_code": 400, "detail": "Validation error", "validation_errors": {
                        "model_version": ["Model version doesn't exist either as live model or as static "
                                          "predictions."]}}, status_code=400,
                                        headers={"Set-Cookie": "sessionid=fake-session; HttpOnly"})
                self.project_versions[pid] = body["model_version"]
            return {"id": pid, "title": "fake project", "model_version": body.get("model_version", "")}

        return app
