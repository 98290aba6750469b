"""Webhook events, the background retrain queue, version bumps, failures, restarts and several workers."""
from __future__ import annotations

import logging
import re
import time

import pytest
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.runtime import Runtime
from tests.backend.conftest import (CHOICES_XML, annotation_event, choice_result, local_task, setup_project,
                                    shared_loader)
from tests.backend.fakes import LEGACY_TOKEN, FakeLabelStudio, ServerThread
from tests.waiting import eventually

TASKS = [local_task(i + 1, f"imgs/{name}{k}.png") for i, (name, k) in
         enumerate([(n, k) for n in ("red", "green", "blue") for k in range(3)])]
LABELS = {t["id"]: re.match(r"[a-z]+", t["data"]["image"].split("/")[-1]).group(0) for t in TASKS}


def predict(client, tasks=TASKS, project="1.1"):
    resp = client.post("/predict", json={"tasks": tasks, "project": project, "label_config": CHOICES_XML})
    assert resp.status_code == 200, resp.text
    return resp.json()["results"]


def runs(runtime, project="1"):
    return runtime.store.runs(project, limit=100)


def annotate_all(client, tasks=TASKS, start_id=100):
    for offset, task in enumerate(tasks):
        resp = client.post("/webhook", json=annotation_event(start_id + offset, task, LABELS[task["id"]]))
        assert resp.status_code == 201, resp.text


def test_annotation_created_retrains_and_bumps_the_version(make_client, docroot):
    with make_client(local_files_document_root=docroot) as (client, runtime):
        v0 = setup_project(client)
        before = predict(client)
        annotate_all(client)
        assert runtime.queue.wait_idle(120)
        v1 = setup_project(client)
        after = predict(client)
        metrics = client.get("/metrics").json()["projects"]["1"]
        versions = client.get("/versions").json()["versions"]
    # debounce 0: how many submits share a run depends on timing; every run publishes the next revision
    assert versions[0] == v0 and versions[-1] == v1 and len(versions) >= 2
    assert v0.endswith("-p1-r0") and v1.endswith(f"-p1-r{len(versions) - 1}")
    assert all(r["model_version"] == v0 for r in before) and all(r["model_version"] == v1 for r in after)
    predicted = [r["result"][0]["value"]["choices"][0] for r in after]
    assert predicted == [LABELS[t["id"]] for t in TASKS]  # trained on these very images: it must fit them
    assert [r["score"] for r in after] != [r["score"] for r in before]
    # debounce 0: a run may already have read the annotation of the submit that queued the next one, which
    # then finds the same training set and is skipped (no version for nothing new)
    assert metrics["annotations"] == len(TASKS) and metrics["training"]["last_run"]["status"] in ("succeeded",
                                                                                                   "skipped")
    assert metrics["training"]["runs"]["succeeded"] == len(versions) - 1
    head_files = sorted(p.name for p in (runtime.store.heads_dir("1") / "r1").iterdir())
    # non-pickle formats; learner.npz (the mix learner's spread scores) only when r1's annotations held 2+ classes,
    # which depends on how many submits the first run read (debounce 0)
    assert head_files in (["head.json", "head.safetensors"], ["head.json", "head.safetensors", "learner.npz"])


def test_burst_of_events_coalesces_into_one_run(make_client, docroot):
    from filelock import FileLock

    with make_client(local_files_document_root=docroot) as (client, runtime):
        setup_project(client)
        # Hold the project's training lock, as a worker process in the middle of a run would: every event of
        # the burst must wait and merge into one pending run, whatever the timing.
        busy = FileLock(str(runtime.store.model_dir / "locks" / "train-1.lock"))
        with busy:
            annotate_all(client)
            assert runs(runtime) == []  # nothing could start
        assert runtime.queue.wait_idle(120)
        finished = runs(runtime)
    assert len(finished) == 1 and finished[0]["status"] == "succeeded"
    assert finished[0]["n_annotations"] == len(TASKS)


def test_events_during_a_run_trigger_exactly_one_more_run(make_client, docroot):
    with make_client(local_files_document_root=docroot, retrain_debounce_seconds=0.3) as (client, runtime):
        setup_project(client)
        original = runtime.queue.train_fn
        entered = []

        def slow_train(project, full_sync, reasons):
            entered.append(time.monotonic())
            if len(entered) == 1:
                # while the first run trains, three more submits arrive
                for offset, task in enumerate(TASKS[3:6]):
                    client.post("/webhook", json=annotation_event(200 + offset, task, LABELS[task["id"]]))
            return original(project, full_sync, reasons)

        runtime.queue.train_fn = slow_train
        client.post("/webhook", json=annotation_event(100, TASKS[0], LABELS[TASKS[0]["id"]]))
        assert runtime.queue.wait_idle(120)
        finished = runs(runtime)
    assert len(entered) == 2
    # The first run already read the three submits that arrived while it started: the follow-up run finds the
    # same training set and publishes nothing (one version for the burst).
    assert [r["status"] for r in finished] == ["skipped", "succeeded"]
    assert finished[1]["n_annotations"] == 4 and finished[0]["n_annotations"] == 4
    assert "training set unchanged" in finished[0]["note"]


def test_bulk_update_delete_and_cancelled_events(make_client, docroot):
    with make_client(local_files_document_root=docroot, retrain="manual") as (client, runtime):
        setup_project(client)
        bulk = {"action": "ANNOTATIONS_CREATED",
                "annotation": [annotation_event(100 + i, t, LABELS[t["id"]])["annotation"] for i, t in
                               enumerate(TASKS[:4])],
                "task": TASKS[:4], "project": {"id": 1, "label_config": CHOICES_XML}}
        resp = client.post("/webhook", json=bulk)
        assert resp.status_code == 201 and resp.json()["status"] == "stored"
        assert runtime.store.count_annotations("1") == 4

        update = annotation_event(100, TASKS[0], "blue", action="ANNOTATION_UPDATED")
        assert client.post("/webhook", json=update).status_code == 201
        stored = {a.id: a for a in runtime.store.list_annotations("1")}
        assert stored[100].result == choice_result("blue")

        skipped = annotation_event(101, TASKS[1], "red", action="ANNOTATION_UPDATED", was_cancelled=True)
        assert client.post("/webhook", json=skipped).status_code == 201
        empty = annotation_event(150, TASKS[5], "red", result=[])
        assert client.post("/webhook", json=empty).status_code == 201
        assert sorted(a.id for a in runtime.store.list_annotations("1")) == [100, 102, 103]

        deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 102}, {"id": 999}],
                   "project": {"id": 1}}
        resp = client.post("/webhook", json=deleted)
        assert resp.status_code == 201 and "1 of 2" in resp.json()["detail"]
        assert sorted(a.id for a in runtime.store.list_annotations("1")) == [100, 103]
        assert runs(runtime) == []  # manual policy: nothing trained yet

        resp = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1, "title": "p"}})
        assert resp.status_code == 201 and resp.json()["status"] == "queued"
        assert runtime.queue.wait_idle(120)
        assert [r["status"] for r in runs(runtime)] == ["succeeded"]
        assert runs(runtime)[0]["n_annotations"] == 2


def test_project_updated_and_unknown_events_never_train(make_client, docroot):
    with make_client(local_files_document_root=docroot) as (client, runtime):
        v0 = setup_project(client)
        for body in ({"action": "PROJECT_UPDATED", "project": {"id": 1, "model_version": v0,
                                                                  "label_config": CHOICES_XML}},
                     {"action": "LABEL_LINK_CREATED", "project": {"id": 1}},
                     {"action": "TASKS_CREATED", "tasks": [{"id": 1}], "project": {"id": 1}},
                     {"action": "SOMETHING_NEW", "whatever": [1, 2]}):
            resp = client.post("/webhook", json=body)
            assert resp.status_code == 200, resp.text
            assert resp.json()["status"] == "ignored"
        assert runtime.queue.wait_idle(10)
        counters = client.get("/metrics").json()["counters"]
        assert runs(runtime) == [] and runtime.store.current_version("1") == v0
    assert counters["webhook_PROJECT_UPDATED"] == 1 and counters["webhook_other"] == 1  # SOMETHING_NEW
    assert not any("SOMETHING_NEW" in key for key in counters)


@pytest.mark.parametrize("body, status, fragment", [
    ([1, 2, 3], 400, "JSON object"),
    ({"no": "action"}, 422, "action"),
    ({"action": ""}, 422, "action"),
    ({"action": "ANNOTATION_CREATED", "annotation": {"id": 1}}, 422, "project"),
    ({"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": CHOICES_XML}}, 422, "annotation"),
    ({"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": CHOICES_XML},
      "annotation": {"result": []}}, 422, "id"),
    ({"action": "ANNOTATIONS_DELETED", "project": {"id": 1, "label_config": CHOICES_XML},
      "annotations": [{"pk": 3}]}, 422, "id"),
])
def test_malformed_webhooks_get_4xx_json(make_client, body, status, fragment):
    with make_client() as (client, runtime):
        setup_project(client)
        resp = client.post("/webhook", json=body)
    assert resp.status_code == status
    assert resp.json()["status"] == status and fragment in resp.json()["detail"]


def test_failed_training_keeps_the_previous_model_serving(make_client, docroot):
    with make_client(local_files_document_root=docroot) as (client, runtime):
        v0 = setup_project(client)
        before = predict(client)

        def crash(project, full_sync, reasons):
            raise MemoryError("simulated crash in the middle of training")

        runtime.queue.train_fn = crash
        annotate_all(client)
        assert runtime.queue.wait_idle(60)
        metrics = client.get("/metrics").json()["projects"]["1"]["training"]
        after = predict(client)
        assert setup_project(client) == v0
    assert metrics["last_failure"]["status"] == "failed"
    assert "MemoryError: simulated crash" in metrics["last_failure"]["error"]
    assert set(metrics["runs"]) == {"failed"} and metrics["runs"]["failed"] >= 1
    assert after == before  # same version, same predictions


def test_crash_after_saving_but_before_publishing_changes_nothing_served(make_client, docroot, monkeypatch):
    with make_client(local_files_document_root=docroot) as (client, runtime):
        v0 = setup_project(client)

        def broken_publish(*args, **kwargs):
            raise OSError("disk full while publishing")

        monkeypatch.setattr(runtime.store, "publish_version", broken_publish)
        annotate_all(client)
        assert runtime.queue.wait_idle(60)
        assert runtime.store.current_version("1") == v0
        assert all(r["model_version"] == v0 for r in predict(client))
        monkeypatch.undo()
        client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
        assert runtime.queue.wait_idle(120)
        assert runtime.store.current_version("1").endswith("-p1-r1")  # the next run still publishes r1


def test_restart_serves_the_same_version_and_predictions(make_settings, docroot):
    settings = make_settings(local_files_document_root=docroot)
    with TestClient(create_app(runtime=Runtime(settings, embedder_loader=shared_loader), preload=False)) as client:
        setup_project(client)
        annotate_all(client)
        assert client.app.state.runtime.queue.wait_idle(120)
        version = setup_project(client)
        before = predict(client)
    with TestClient(create_app(runtime=Runtime(settings, embedder_loader=shared_loader), preload=False)) as client:
        assert setup_project(client) == version
        after = predict(client)
    assert not version.endswith("-r0") and after == before


def test_two_workers_on_one_model_dir_never_serve_a_stale_version(make_settings, docroot):
    settings = make_settings(local_files_document_root=docroot)
    worker_a = Runtime(settings, embedder_loader=shared_loader)
    worker_b = Runtime(settings, embedder_loader=shared_loader)
    with TestClient(create_app(runtime=worker_a, preload=False)) as a, \
            TestClient(create_app(runtime=worker_b, preload=False)) as b:
        v0 = setup_project(a)
        assert all(r["model_version"] == v0 for r in predict(b))  # b has now cached the r0 head
        annotate_all(a)
        assert worker_a.queue.wait_idle(120)
        v1 = setup_project(a)
        assert setup_project(b) == v1
        from_b, from_a = predict(b), predict(a)
    assert v1 != v0 and from_b == from_a and all(r["model_version"] == v1 for r in from_b)


def test_two_workers_receiving_events_train_the_project_one_at_a_time(make_settings, docroot):
    settings = make_settings(local_files_document_root=docroot)
    worker_a = Runtime(settings, embedder_loader=shared_loader)
    worker_b = Runtime(settings, embedder_loader=shared_loader)
    with TestClient(create_app(runtime=worker_a, preload=False)) as a, \
            TestClient(create_app(runtime=worker_b, preload=False)) as b:
        setup_project(a)
        for offset, task in enumerate(TASKS):
            (a if offset % 2 else b).post("/webhook", json=annotation_event(100 + offset, task, LABELS[task["id"]]))
        assert worker_a.queue.wait_idle(120) and worker_b.queue.wait_idle(120)
        finished = worker_a.store.runs("1", limit=100)
    revisions = [v.revision for v in worker_a.store.list_versions("1")]
    assert revisions == sorted(set(revisions)) and revisions[0] == 0  # no duplicate revision numbers
    spans = sorted((r["started_at"], r["finished_at"]) for r in finished if r["status"] != "skipped")
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:]))  # runs never overlap
    assert worker_a.store.count_annotations("1") == len(TASKS)
    assert worker_a.store.pending_seq("1")[0] == worker_a.store.pending_seq("1")[1]  # every request consumed


def test_start_training_fetches_annotations_and_syncs_project_version(make_client, docroot):
    from tests.backend.conftest import png

    ls_tasks = []
    for task in TASKS:
        annotations = [{"id": 500 + task["id"], "result": choice_result(LABELS[task["id"]]), "was_cancelled": False}]
        if task["id"] == 1:
            annotations.append({"id": 900, "result": choice_result("green"), "was_cancelled": True})
        ls_tasks.append(dict(task, annotations=annotations))
    fake = FakeLabelStudio(image=png(), tasks=ls_tasks)
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url,
                         label_studio_api_key=LEGACY_TOKEN, warm_cache=False) as (client, runtime):
            setup_project(client)
            resp = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1, "title": "p"}})
            assert resp.status_code == 201
            assert runtime.queue.wait_idle(120)
            version = runtime.store.current_version("1")
            stored = sorted(a.id for a in runtime.store.list_annotations("1"))
            echo = client.post("/webhook", json={"action": "PROJECT_UPDATED",
                                                 "project": {"id": 1, "model_version": version}})
            assert echo.json()["status"] == "ignored"
            assert runtime.queue.wait_idle(10)
            assert len(runs(runtime)) == 1
            assert not any(r["method"] == "PATCH" for r in fake.requests)  # no predictions of it yet
            predict(client)  # Retrieve Predictions stores predictions of the new version...
            # ...then the sync switches the project to it, on its own worker: wait before the backend stops
            assert eventually(lambda: fake.project_versions == {1: version}), fake.requests[-3:]
    assert version.endswith("-p1-r1")
    assert stored == [500 + t["id"] for t in TASKS]  # the cancelled one is not learnt from
    assert fake.project_versions == {1: version}
    assert any(r["path"] == "/api/tasks/" for r in fake.requests)


def test_project_version_is_synced_once_label_studio_has_its_predictions(make_client, docroot, caplog):
    from tests.backend.conftest import png

    caplog.set_level(logging.INFO)
    fake = FakeLabelStudio(image=png(), tasks=[], versions_with_predictions=set())
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url,
                         label_studio_api_key=LEGACY_TOKEN, warm_cache=False) as (client, runtime):
            runtime.version_sync.delays = (0.0,)  # one attempt per trigger keeps the test's order exact
            setup_project(client)
            annotate_all(client)
            assert runtime.queue.wait_idle(120)
            v1 = runtime.store.current_version("1")
            time.sleep(0.5)  # the old sync asked at once, here: give a wrong attempt the time to happen
            assert not any(r["method"] == "PATCH" for r in fake.requests)  # never asked before predictions exist
            fake.versions_with_predictions.add(v1)  # Retrieve Predictions stores them...
            predict(client)  # ...right after this call returns
            assert eventually(lambda: fake.project_versions == {1: v1}), fake.requests[-3:]
            # the backend records the switch once Label Studio's answer is back: wait for that as well
            assert eventually(lambda: runtime.store.kv_get("1", "labelloop.label_studio_model_version") == v1)
            patches = sum(r["method"] == "PATCH" for r in fake.requests)
            predict(client)  # already in step: no further update
    assert sum(r["method"] == "PATCH" for r in fake.requests) == patches == 1
    assert "did not take model_version" not in caplog.text  # no refused update in the log


def test_deleting_every_annotation_returns_to_the_prior(make_client, docroot):
    with make_client(local_files_document_root=docroot) as (client, runtime):
        v0 = setup_project(client)
        prior = predict(client)
        annotate_all(client)
        assert runtime.queue.wait_idle(120)
        trained = predict(client)
        ids = [{"id": a.id} for a in runtime.store.list_annotations("1")]
        client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": ids, "project": {"id": 1}})
        assert runtime.queue.wait_idle(120)
        back = predict(client)
        last = runs(runtime)[0]
    assert last["status"] == "succeeded" and last["n_annotations"] == 0
    assert back[0]["model_version"] not in (v0, trained[0]["model_version"])  # a new version, never reused
    assert [(r["result"], r["score"]) for r in back] == [(r["result"], r["score"]) for r in prior]


def test_start_training_still_trains_when_label_studio_is_unreachable(make_client, docroot):
    with make_client(local_files_document_root=docroot, label_studio_url="http://127.0.0.1:9",
                     label_studio_api_key=LEGACY_TOKEN, warm_cache=False) as (client, runtime):
        setup_project(client)
        annotate_all(client)
        assert runtime.queue.wait_idle(120)
        before = runtime.store.current_version("1")
        client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
        assert runtime.queue.wait_idle(120)
        last = runs(runtime)[0]
    # It ran on the stored annotations, which are the served version's: nothing new is published.
    assert last["status"] == "skipped" and last["n_annotations"] == len(TASKS)
    assert "not re-read from Label Studio" in last["note"] and "training set unchanged" in last["note"]
    assert last["error"] is None and runtime.store.current_version("1") == before


def test_push_predictions_refreshes_label_studio_without_retrieve(make_client, docroot):
    from tests.backend.conftest import png

    broken = local_task(99, "imgs/broken.png")
    fake = FakeLabelStudio(image=png(), tasks=TASKS + [broken], versions_with_predictions=set())
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN,
                         warm_cache=False, push_predictions=True, retrain_debounce_seconds=2.0) as (client, runtime):
            setup_project(client)
            annotate_all(client)
            assert runtime.queue.wait_idle(120)
            v1 = runtime.store.current_version("1")
            last = runs(runtime)[0]
            counters = client.get("/metrics").json()["counters"]
    assert counters.get("predict_requests", 0) == 0  # nobody asked for predictions
    pushed = {row["task"]: row for row in fake.imported_predictions}  # the newest push per task
    assert sorted(pushed) == [t["id"] for t in TASKS]  # the unreadable task is left out
    assert all(row["model_version"] == v1 and 0 <= row["score"] <= 1 for row in pushed.values())
    assert [pushed[t["id"]]["result"][0]["value"]["choices"][0] for t in TASKS] == [LABELS[t["id"]] for t in TASKS]
    assert fake.project_versions == {1: v1}  # accepted at once: its predictions exist now
    assert "9 prediction(s) pushed" in last["note"]
