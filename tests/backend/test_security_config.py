"""Basic auth, the webhook shared secret, the request size limit, settings precedence and MODEL_DIR checks."""
from __future__ import annotations

import base64
import os
import re

import pytest
from fastapi.routing import APIRoute
from typer.testing import CliRunner

from backend.config import ConfigError, load_settings
from backend.store import Store, StoreError
from tests.backend.conftest import annotation_event, local_task, setup_project

AUTH = {"Authorization": "Basic " + base64.b64encode(b"ls:pa55word").decode()}
WRONG = {"Authorization": "Basic " + base64.b64encode(b"ls:guess").decode()}


# docs/backend.md §7: with basic auth on, every route needs it (the webhook also takes its shared secret).
PUBLIC_ROUTES: set[tuple[str, str]] = set()


def unguarded_routes(client) -> list[tuple[str, str]]:
    """Return (method, path) of every route of the app that answers a request without credentials with
    anything but 401, or cannot be checked (a route kind this helper does not know)."""
    found = []
    for route in client.app.routes:
        methods = sorted(getattr(route, "methods", None) or ["?"])
        path = re.sub(r"{[^}]+}", "1", getattr(route, "path", "?"))
        for method in methods:
            if (method, route.path) in PUBLIC_ROUTES:
                continue
            if method == "?" or not isinstance(route, APIRoute):
                found.append((method, getattr(route, "path", repr(route))))
                continue
            for headers in ({}, WRONG, {"Authorization": "Basic !!notbase64"}, {"Authorization": "Token abc"}):
                resp = client.request(method, path, headers=headers, json={} if method == "POST" else None)
                if resp.status_code != 401 or not resp.headers.get("www-authenticate", "").startswith("Basic") \
                        or resp.json()["status"] != 401:
                    found.append((method, route.path))
                    break
    return found


def test_basic_auth_guards_every_route_of_the_app(make_client):
    with make_client(basic_auth_user="ls", basic_auth_pass="pa55word") as (client, _):
        routes = {(m, r.path) for r in client.app.routes for m in getattr(r, "methods", ())}
        assert {("GET", "/health"), ("POST", "/predict"), ("POST", "/webhook"), ("GET", "/metrics")} <= routes
        assert unguarded_routes(client) == []
        # with the right credentials each route answers (a 422 for an empty body is fine), never 401
        for method, path in routes:
            resp = client.request(method, path, headers=AUTH, json={} if method == "POST" else None)
            assert resp.status_code != 401, (method, path)


def test_a_route_added_without_auth_is_caught(make_client):
    with make_client(basic_auth_user="ls", basic_auth_pass="pa55word") as (client, _):
        @client.app.get("/debug/{item}")
        def leak(item: str) -> dict:
            return {"item": item}

        assert unguarded_routes(client) == [("GET", "/debug/{item}")]


def test_webhook_accepts_the_shared_secret_by_header_only(make_client, docroot):
    event = annotation_event(1, local_task(1, "imgs/red0.png"), "red")
    with make_client(basic_auth_user="ls", basic_auth_pass="pa55word", webhook_secret="s3cret-value",
                     local_files_document_root=docroot, retrain="manual") as (client, runtime):
        assert client.post("/webhook", json=event).status_code == 401
        assert client.post("/webhook", json=event, headers={"X-Labelloop-Secret": "wrong"}).status_code == 401
        assert client.post("/webhook?token=wrong", json=event).status_code == 401
        assert client.post("/webhook", json=event, headers={"X-Labelloop-Secret": "s3cret-value"}).status_code == 201
        # URLs land in access and proxy logs: the secret is refused there, even when it is right
        in_url = client.post("/webhook?token=s3cret-value", json=event)
        assert in_url.status_code == 401 and "X-Labelloop-Secret header" in in_url.json()["detail"]
        assert client.post("/webhook", json=event, headers=AUTH).status_code == 201  # LS's START_TRAINING path
        # the secret opens /webhook only
        assert client.get("/health", headers={"X-Labelloop-Secret": "s3cret-value"}).status_code == 401
    assert runtime.store.count_annotations("1") == 1


def test_access_log_masks_secrets_in_query_strings():
    import logging

    from backend.app import RedactQuerySecrets

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "POST", "/webhook?token=s3cret-value&x=1", "1.1", 401), None)
    assert RedactQuerySecrets().filter(record)
    line = record.getMessage()
    assert "s3cret" not in line and "/webhook?token=***&x=1" in line
    plain = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                              ("127.0.0.1:5", "GET", "/versions?project=3", "1.1", 200), None)
    RedactQuerySecrets().filter(plain)
    assert plain.getMessage().endswith('"GET /versions?project=3 HTTP/1.1" 200')


@pytest.mark.parametrize("overrides, warned", [
    ({"host": "0.0.0.0"}, ["WITHOUT basic auth"]),
    ({"host": "::"}, ["WITHOUT basic auth"]),
    ({"host": "192.168.1.20"}, ["WITHOUT basic auth"]),
    ({"host": "127.0.0.1"}, []),
    ({"host": "localhost"}, []),
    ({"host": "::1"}, []),
    ({"host": "0.0.0.0", "basic_auth_user": "u", "basic_auth_pass": "p"}, ["LABELLOOP_WEBHOOK_SECRET is not set"]),
    ({"host": "0.0.0.0", "basic_auth_user": "u", "basic_auth_pass": "p", "webhook_secret": "s"}, []),
])
def test_an_exposed_server_without_auth_warns_loudly_at_start(make_settings, caplog, overrides, warned):
    import logging

    from backend.app import create_app
    from backend.runtime import Runtime

    with caplog.at_level(logging.WARNING, logger="backend.app"):
        create_app(runtime=Runtime(make_settings(**overrides)), start=False)
    security = [r.getMessage() for r in caplog.records if r.getMessage().startswith("SECURITY:")]
    assert len(security) == len(warned)
    assert all(fragment in message for fragment, message in zip(warned, security))
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.getMessage().startswith("SECURITY:"))


def test_webhook_secret_without_basic_auth(make_client):
    with make_client(webhook_secret="s3cret-value") as (client, _):
        body = {"action": "PROJECT_UPDATED", "project": {"id": 1}}
        assert client.post("/webhook", json=body).status_code == 401
        assert client.post("/webhook", json=body, headers={"X-Labelloop-Secret": "s3cret-value"}).status_code == 200
        assert client.get("/health").status_code == 200


def test_request_body_limit(make_client):
    with make_client(max_request_bytes=2000) as (client, _):
        big = {"tasks": [{"id": i, "data": {"image": "/data/local-files/?d=" + "x" * 50}} for i in range(100)],
               "project": "1.1"}
        resp = client.post("/predict", json=big)
        assert resp.status_code == 413 and "byte limit" in resp.json()["detail"]

        def chunks():  # no Content-Length: the limit is enforced while streaming
            for _ in range(10):
                yield b" " * 500

        resp = client.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})
        assert resp.status_code == 413


def test_settings_precedence_yaml_env_overrides(tmp_path):
    config = tmp_path / "backend.yaml"
    config.write_text("strategy: entropy\nport: 9999\nurl_allowlist: [img.example.org]\n")
    env = {"LABEL_STUDIO_HOST": "http://ls:8080/", "PORT": "7000", "LABELLOOP_RETRAIN": "manual",
           "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p", "VERIFY_SSL": "false"}
    settings = load_settings(config_path=config, env=env, port=None, workers=3)
    assert settings.strategy == "entropy"             # from the --config file
    assert settings.port == 7000                      # env beats the file
    assert settings.workers == 3                      # explicit override beats everything
    assert settings.label_studio_url == "http://ls:8080"  # LABEL_STUDIO_HOST fallback, trailing slash dropped
    assert settings.retrain == "manual" and settings.verify_ssl is False and settings.basic_auth_enabled
    assert settings.url_allowlist == ("img.example.org",)
    assert load_settings(env={"LABEL_STUDIO_URL": "http://a:1", "LABEL_STUDIO_HOST": "http://b:2"}
                         ).label_studio_url == "http://a:1"
    defaults = load_settings(env={})
    assert (defaults.embedder, defaults.strategy, defaults.retrain) == ("auto", "margin", "on_submit")
    assert "pa55" not in repr(load_settings(env={"BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "pa55",
                                                 "LABEL_STUDIO_API_KEY": "pa55key"}))


@pytest.mark.parametrize("env, fragment", [
    ({"LABELLOOP_STRATEGY": "bald"}, "strategy"),
    ({"LABELLOOP_RETRAIN": "sometimes"}, "retrain"),
    ({"PORT": "eighty"}, "PORT"),
    ({"VERIFY_SSL": "maybe"}, "VERIFY_SSL"),
    ({"LABEL_STUDIO_URL": "localhost:8080"}, "http"),
    ({"BASIC_AUTH_USER": "only-user"}, "BASIC_AUTH_PASS"),
    ({"BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "pässword"}, "ASCII"),
    ({"BASIC_AUTH_USER": "a:b", "BASIC_AUTH_PASS": "p"}, "without ':'"),
    ({"WORKERS": "0"}, "workers"),
])
def test_bad_settings_are_clear_errors(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_settings(env=env)


def test_every_bad_setting_is_named_with_where_it_came_from(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("threads: many\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config_path=config, env={"LABELLOOP_STRATEGY": "bald", "WORKERS": "0"})
    message = str(info.value)
    assert "'strategy' from env LABELLOOP_STRATEGY" in message and "'margin'" in message
    assert "'workers' from env WORKERS" in message and f"'threads' from {config}" in message


def test_label_studio_names_for_the_document_root_and_clip_are_settings(tmp_path, monkeypatch):
    from backend.config import Settings

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir(), theirs.mkdir()
    # Label Studio's own name works, and the upstream ML-backend name wins when both are set.
    assert load_settings(env={"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(theirs)}).local_files_document_root \
        == theirs
    both = {"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(theirs), "LOCAL_FILES_DOCUMENT_ROOT": str(ours)}
    assert load_settings(env=both).local_files_document_root == ours
    # ... by the same rule `labelloop label` uses for Label Studio exports (one definition of the names)
    from labelers.formats.label_studio import local_files_root_from_env

    assert local_files_root_from_env(both) == str(ours)
    assert local_files_root_from_env({"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(theirs)}) == str(theirs)
    assert load_settings(env={"LABELLOOP_CLIP": "open_clip:local-dir:/m"}).clip == "open_clip:local-dir:/m"
    assert load_settings(env={"LABELLOOP_CLIP_WEIGHTS": "/w/clip.safetensors"}).clip == "/w/clip.safetensors"
    assert load_settings(env={}).clip is None
    # pydantic-settings' own entry point reads the process environment the same way.
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(theirs))
    monkeypatch.setenv("LABELLOOP_STRATEGY", "entropy")
    assert Settings() == load_settings()
    assert (Settings().local_files_document_root, Settings().strategy) == (theirs, "entropy")


def test_a_wrong_document_root_is_refused_at_start_naming_it(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(ConfigError, match=f"LOCAL_FILES_DOCUMENT_ROOT: {missing} is not an existing directory"):
        load_settings(env={"LOCAL_FILES_DOCUMENT_ROOT": str(missing)})


def test_unknown_key_in_config_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("stratgy: margin\n")
    with pytest.raises(ConfigError, match="stratgy"):
        load_settings(config_path=config, env={})


def test_read_only_model_dir_is_a_clear_error(tmp_path):
    # chmod does not stop root (tests may run as root), so use a directory the kernel itself keeps read-only.
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    target = folder if os.geteuid() != 0 else "/proc"
    try:
        with pytest.raises(StoreError, match="not writable"):
            Store(target)
    finally:
        folder.chmod(0o700)


def test_unusable_model_dirs_are_clear_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot be created"):
        Store(blocker / "model_dir")  # parent is a file
    with pytest.raises(StoreError, match="not a directory"):
        Store(blocker)
    created = Store(tmp_path / "new" / "model_dir")  # a missing folder under a writable parent is created
    assert created.path.exists()


def test_serve_reports_a_bad_model_dir_without_traceback(tmp_path):
    from labelloop.cli import app

    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(app, ["serve", "--model-dir", str(blocker / "sub"), "--port", "1"])
    assert result.exit_code == 2
    assert "MODEL_DIR" in result.output and "Traceback" not in result.output


def test_serve_reports_a_bad_setting_without_traceback(tmp_path):
    from labelloop.cli import app

    result = CliRunner().invoke(app, ["serve", "--model-dir", str(tmp_path), "--strategy", "bald"])
    assert result.exit_code == 2 and "strategy" in result.output and "Traceback" not in result.output


def test_project_keeps_its_embedder_when_the_configured_one_changes(make_client, make_settings, docroot, caplog):
    from fastapi.testclient import TestClient

    from backend.app import create_app
    from backend.runtime import Runtime
    from tests.backend.conftest import shared_loader

    with make_client(local_files_document_root=docroot) as (client, runtime):
        v0 = setup_project(client)
        first = client.post("/predict", json={"tasks": [local_task(1, "imgs/red0.png")], "project": "1.1"}).json()
        clip_spec = runtime.default_spec
    settings = make_settings(local_files_document_root=docroot, embedder="efficientnet-lite0@32")
    with TestClient(create_app(runtime=Runtime(settings, embedder_loader=shared_loader), preload=False)) as client:
        assert setup_project(client) == v0  # same project: same (CLIP) version
        again = client.post("/predict", json={"tasks": [local_task(1, "imgs/red0.png")], "project": "1.1"}).json()
        fresh = setup_project(client, "2.1")
        stored = client.app.state.runtime.store
        assert stored.get_project("1").embedder == clip_spec
        assert stored.get_project("2").embedder == "efficientnet-lite0@32"
    assert again == first
    assert fresh.startswith("efficientnet-lite0-32-p2-")
    assert "keeps embedder" in caplog.text


def test_the_default_bind_address_is_loopback_and_the_docker_image_opts_in(monkeypatch):
    # Secure by default: `labelloop serve` with no settings must not listen beyond this machine.
    from pathlib import Path

    monkeypatch.delenv("HOST", raising=False)
    assert load_settings().host == "127.0.0.1"
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    assert "HOST=0.0.0.0" in dockerfile  # containers must listen on their interface to be reachable
