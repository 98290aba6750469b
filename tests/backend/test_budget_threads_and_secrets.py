"""The predict budget bounds downloads, background work runs on bounded executors, and Label Studio's failures
(cookies, tokens, a wrong API key) are reported without secrets and without pointless retries."""
from __future__ import annotations

import logging
import threading

from tests.backend.conftest import CHOICES_XML, COLORS, local_task, setup_project
from tests.backend.fakes import LEGACY_TOKEN, FakeLabelStudio, ServerThread
from tests.waiting import eventually

NINE = [local_task(i + 1, f"imgs/{c}{k}.png") for i, (c, k) in enumerate([(c, k) for c in COLORS for k in range(3)])]


def _labelloop_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("labelloop-")}



def seven_seconds_per_download(runtime) -> list[float]:
    """Make every download take 7 s on a fake clock the fetch deadline reads; returns the start times seen."""
    now, starts = [0.0], []
    real_fetch = runtime.media.fetch

    def slow_fetch(url, task_id=None):
        starts.append(now[0])
        now[0] += 7.0
        return real_fetch(url, task_id)

    runtime.fetcher.clock = lambda: now[0]
    runtime.media.fetch = slow_fetch
    return starts

def test_no_download_starts_after_the_fetch_deadline_derived_from_the_budget(make_client, docroot):
    # Budget 30 s, fetch timeout 10 s: downloads may start until 20 s, so each one ends within the budget.
    # A fake clock advances 7 s per download: they start at 0, 7 and 14; the fourth would start at 21.
    with make_client(local_files_document_root=docroot, predict_budget_seconds=30, fetch_timeout_seconds=10,
                     threads=1, warm_cache=False) as (client, runtime):
        starts = seven_seconds_per_download(runtime)
        setup_project(client)
        resp = client.post("/predict", json={"tasks": NINE, "project": "1.1"})
        counters = client.get("/metrics").json()["counters"]
    results = resp.json()["results"]
    assert resp.status_code == 200 and len(results) == len(NINE)
    assert starts == [0.0, 7.0, 14.0]  # none at or after the 20 s fetch deadline
    assert [r["score"] is not None for r in results[:3]] == [True] * 3
    assert results[3:] == [[]] * 6  # not predicted: Label Studio stores nothing and asks again later
    assert counters["tasks_predicted"] == 3 and counters["tasks_not_predicted"] == 6


def test_many_task_imports_share_one_bounded_executor(make_client, docroot):
    from backend.warmer import BACKGROUND_WORKERS

    gate = threading.Event()
    with make_client(local_files_document_root=docroot, threads=2) as (client, runtime):
        setup_project(client)
        real_fetch = runtime.media.fetch
        runtime.media.fetch = lambda url, task_id=None: gate.wait(30) and real_fetch(url, task_id)
        before = _labelloop_threads()
        for n in range(12):  # twelve imports while the first downloads hang
            tasks = [dict(task, id=100 + 10 * n + i) for i, task in enumerate(NINE[:2])]
            resp = client.post("/webhook", json={"action": "TASKS_CREATED", "tasks": tasks,
                                                 "project": {"id": 1, "label_config": CHOICES_XML}})
            assert resp.status_code == 200 and "2 new task(s)" in resp.json()["detail"]
        assert eventually(lambda: len(_labelloop_threads() - before) >= 2)  # the work has started...
        started = _labelloop_threads() - before
        gate.set()
        ids = [100 + 10 * n + i for n in range(12) for i in range(2)]
        assert eventually(lambda: all(key for _, key in runtime.store.content_keys("1", ids).values()))
    # ...on at most BACKGROUND_WORKERS background threads and `threads` fetch threads, not one per import
    assert len(started) <= BACKGROUND_WORKERS + 2
    assert {t.name.rsplit("_", 1)[0] for t in started} <= {"labelloop-background", "labelloop-fetch"}


def test_metrics_and_logs_never_show_label_studio_cookies_or_tokens(make_client, docroot, caplog):
    from tests.backend.conftest import png

    caplog.set_level(logging.DEBUG)
    body = {"detail": "Server Error: see http://ls.example/api/x?token=url-secret-123",
            "token": "body-secret-456"}
    headers = {"Set-Cookie": "sessionid=cookie-secret-789; HttpOnly", "X-Api-Token": "header-secret-000"}
    fake = FakeLabelStudio(image=png(), tasks=[], task_list_failures=[(500, body, headers)] * 3)
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url,
                         label_studio_api_key=LEGACY_TOKEN) as (client, runtime):
            runtime.warmer.attempts = 1  # one warm-up attempt: the three failures are all it sees
            setup_project(client)
            assert eventually(lambda: (runtime.warmer.status("1") or {}).get("state") == "failed")
            metrics = client.get("/metrics").text
    warm = runtime.warmer.status("1")
    assert "HTTP 500" in warm["detail"]  # the reason is still there...
    for secret in ("cookie-secret-789", "header-secret-000", "url-secret-123", "body-secret-456", LEGACY_TOKEN,
                   "sessionid", "set-cookie"):
        assert secret not in metrics.lower() and secret not in caplog.text.lower(), secret
    assert sum(r["path"] == "/api/tasks/" for r in fake.requests) == 3  # 5xx is transient: tenacity retried


def test_transient_label_studio_failures_are_retried_then_succeed(make_client, docroot):
    from tests.backend.conftest import png

    fake = FakeLabelStudio(image=png(), tasks=[dict(t, project=1) for t in NINE[:2]],
                           task_list_failures=[(503, {"detail": "busy"}, {})] * 2)
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url,
                         label_studio_api_key=LEGACY_TOKEN) as (client, runtime):
            setup_project(client)
            assert eventually(lambda: (runtime.warmer.status("1") or {}).get("state") in ("done", "failed"))
    assert runtime.warmer.status("1")["state"] == "done" and runtime.warmer.status("1")["embedded"] == 2
    first_pages = [r for r in fake.requests if r["path"] == "/api/tasks/" and "page=1&" in r["query"]]
    assert len(first_pages) == 3  # two 503s retried by tenacity, then the listing


def test_a_wrong_api_key_is_reported_once_in_health_and_never_retried(make_client, docroot, caplog):
    from tests.backend.conftest import png

    caplog.set_level(logging.INFO)
    fake = FakeLabelStudio(image=png(), tasks=[])
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url,
                         label_studio_api_key="wrong-key-0123456789") as (client, runtime):
            assert client.get("/health").json()["status"] == "UP"
            setup_project(client)
            assert eventually(lambda: (runtime.warmer.status("1") or {}).get("state") == "failed")
            client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
            assert runtime.queue.wait_idle(60)
            health = client.get("/health").json()
    assert health["status"] == "DEGRADED"
    assert health["problems"] == ["Label Studio refused LABEL_STUDIO_API_KEY (legacy-token): HTTP 401 on GET "
                                  "/api/tasks/"]
    said = [r for r in caplog.records if "refused LABEL_STUDIO_API_KEY" in r.getMessage()
            and r.name == "backend.ls_auth"]
    assert [r.levelno for r in said] == [logging.WARNING]  # once, although two calls were refused
    # warm-up and START_TRAINING's re-read: one request each, 401 is not retried as if transient
    assert sum(r["path"] == "/api/tasks/" for r in fake.requests) == 2  # (no page 2: page 1 failed)
    assert "wrong-key-0123456789" not in caplog.text


def test_label_studio_calls_use_one_auth_stack_for_a_personal_access_token(make_client, docroot):
    from tests.backend.conftest import png

    fake = FakeLabelStudio(image=png(), tasks=[dict(t, project=1) for t in NINE[:3]])
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url,
                         label_studio_api_key=fake.pat) as (client, runtime):
            setup_project(client)
            assert eventually(lambda: (runtime.warmer.status("1") or {}).get("state") == "done")
            fake.reject_next_bearer = True  # the access token is revoked: one refresh, then the SDK call works
            client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
            assert runtime.queue.wait_idle(60)
    listed = [r for r in fake.requests if r["path"] == "/api/tasks/" and "page=1&" in r["query"]]
    assert len(listed) == 3  # warm-up, the rejected call, its retry after the refresh
    first, revoked, retried = (r["authorization"] for r in listed)
    assert first == revoked and first.startswith("Bearer ") and first[7:] not in fake.access_tokens
    assert retried.startswith("Bearer ") and retried[7:] in fake.access_tokens
    assert fake.refreshes == 2  # the first exchange, and one after the 401: our stack, not the SDK's
    assert not any("labelloop-auth" in (r["authorization"] or "") for r in fake.requests)


def test_the_vlm_starts_no_download_after_the_fetch_deadline(make_client, make_settings, docroot):
    import numpy as np

    from backend.runtime import Runtime
    from tests.backend.conftest import shared_loader

    class FakeVLM:  # answers "red" for every image; counts the images it was shown
        seen = 0

        def classify(self, images, names):
            FakeVLM.seen += len(images)
            return np.tile(np.asarray([[0.8, 0.1, 0.1]]), (len(images), 1))

    settings = make_settings(local_files_document_root=docroot, predictor="vlm", vlm_model="fake",
                             predict_budget_seconds=30, fetch_timeout_seconds=10, threads=1, warm_cache=False)
    runtime = Runtime(settings, embedder_loader=shared_loader, vlm_loader=lambda spec: FakeVLM())
    with make_client(runtime=runtime) as (client, _):
        starts = seven_seconds_per_download(runtime)
        setup_project(client)
        results = client.post("/predict", json={"tasks": NINE, "project": "1.1"}).json()["results"]
    assert starts == [0.0, 7.0, 14.0] and FakeVLM.seen == 3
    assert [r["result"][0]["value"]["choices"] for r in results[:3]] == [["red"]] * 3
    assert results[3:] == [[]] * 6


def test_a_failed_training_run_is_recorded_without_secrets(make_client, docroot):
    from tests.backend.conftest import annotation_event

    with make_client(local_files_document_root=docroot, label_studio_url="http://127.0.0.1:9",
                     label_studio_api_key=LEGACY_TOKEN, warm_cache=False) as (client, runtime):
        def leaky(project, full_sync, reasons):
            raise RuntimeError(f"GET http://127.0.0.1:9/api/x?token=q-secret-1 with key {LEGACY_TOKEN} "
                               "sessionid=s-secret-2")

        runtime.queue.train_fn = leaky
        setup_project(client)
        client.post("/webhook", json=annotation_event(1, NINE[0], "red"))
        assert runtime.queue.wait_idle(60)
        failure = client.get("/metrics").json()["projects"]["1"]["training"]["last_failure"]
    assert failure["error"].startswith("RuntimeError: GET http://127.0.0.1:9/api/x?…")
    for secret in ("q-secret-1", LEGACY_TOKEN, "s-secret-2"):
        assert secret not in failure["error"]
