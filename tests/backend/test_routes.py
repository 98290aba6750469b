"""Every route's JSON shape and the /predict count rule, through FastAPI's in-process client."""
from __future__ import annotations

import pytest

from backend.runtime import Runtime
from tests.backend.conftest import CHOICES_XML, MULTI_XML, choice_result, local_task, setup_project, shared_loader


def test_health_and_root_report_model_class_and_embedder(make_client, docroot):
    with make_client(local_files_document_root=docroot) as (client, runtime):
        for path in ("/", "/health"):
            body = client.get(path).json()
            assert body["status"] == "UP"
            assert body["model_class"] == "LabelloopModel"
            assert body["embedder"]["family"] == "clip" and body["embedder"]["zero_shot"] is True
            assert body["embedder"]["spec"] == runtime.default_spec


def test_setup_returns_initial_version_without_loading_weights(make_settings):
    loads = []
    runtime = Runtime(make_settings(), embedder_loader=lambda spec: loads.append(spec) or shared_loader(spec))
    from fastapi.testclient import TestClient

    from backend.app import create_app

    with TestClient(create_app(runtime=runtime, preload=False)) as client:
        version = setup_project(client, "7.1700000000")
        assert version == setup_project(client, "7.1700000000")  # Label Studio calls /setup 2-3 times
    assert version.endswith("-p7-r0") and version.startswith("clip-")
    assert loads == []  # /setup never loads an embedder


def test_predict_returns_one_result_per_task_in_order(make_client, docroot):
    tasks = [local_task(1, "imgs/red0.png"), local_task(2, "imgs/broken.png"),
             local_task(3, "imgs/blue0.png"), local_task(4, "imgs/missing.png"),
             {"id": 5, "project": 1, "data": {"image": "http://169.254.169.254/latest/meta-data"}},
             {"id": 6, "project": 1, "data": {"text": "no image key"}}]
    with make_client(local_files_document_root=docroot) as (client, runtime):
        version = setup_project(client)
        resp = client.post("/predict", json={"tasks": tasks, "project": "1.1700000000", "label_config": CHOICES_XML,
                                             "params": {"login": None, "password": None, "context": None}})
        assert resp.status_code == 200, resp.text
        results = resp.json()["results"]
    assert len(results) == len(tasks)
    assert all(r["model_version"] == version for r in results)
    for good in (0, 2):
        region = results[good]["result"][0]
        assert region["from_name"] == "label" and region["to_name"] == "image" and region["type"] == "choices"
        assert region["value"]["choices"][0] in ("red", "green", "blue")
        assert 0.0 <= results[good]["score"] <= 1.0
    for bad in (1, 3, 4, 5):
        assert results[bad] == {"result": [], "score": None, "model_version": version}


def test_multiple_choice_predicts_a_list_of_choices(make_client, docroot):
    with make_client(local_files_document_root=docroot) as (client, _):
        setup_project(client, "2.1", MULTI_XML)
        xml = MULTI_XML.replace('choice="multiple"', 'choice="multiple" model_score_threshold="0.0"')
        resp = client.post("/predict", json={"tasks": [local_task(1, "imgs/red0.png", 2)], "project": "2.1",
                                             "label_config": xml})
        result = resp.json()["results"][0]
    # threshold 0 keeps every class: all three are pre-selected in one region
    assert result["result"][0]["from_name"] == "tags"
    assert sorted(result["result"][0]["value"]["choices"]) == ["blue", "green", "red"]


def test_predict_uses_stored_label_config_when_request_has_none(make_client, docroot):
    with make_client(local_files_document_root=docroot) as (client, _):
        setup_project(client)
        resp = client.post("/predict", json={"tasks": [local_task(1, "imgs/red0.png")], "project": "1.1"})
        assert resp.status_code == 200
        assert resp.json()["results"][0]["result"][0]["type"] == "choices"


def test_unservable_label_config_is_a_clear_error_at_setup(make_client):
    xml = '<View><Text name="text" value="$text"/><Choices name="c" toName="text"><Choice value="a"/></Choices></View>'
    with make_client() as (client, _):
        resp = client.post("/setup", json={"project": "3.1", "schema": xml})
    assert resp.status_code == 422
    body = resp.json()
    assert body["status"] == 422 and "<Image>" in body["detail"]


@pytest.mark.parametrize("project", ["abc.1700000000", "1e3", {"id": 1}, True])
def test_setup_with_a_malformed_project_id_is_a_422_and_connects_nothing(make_client, project):
    with make_client() as (client, runtime):
        resp = client.post("/setup", json={"project": project, "schema": CHOICES_XML})
        assert resp.status_code == 422 and "project" in resp.json()["detail"]
        assert runtime.store.list_projects() == []


def test_unknown_strategy_in_extra_params_is_rejected_at_setup(make_client):
    with make_client() as (client, _):
        resp = client.post("/setup", json={"project": "3.1", "schema": CHOICES_XML,
                                           "extra_params": {"strategy": "most-fun"}})
    assert resp.status_code == 422 and "most-fun" in resp.json()["detail"]


@pytest.mark.parametrize("body, fragment", [
    ({"project": "1.1"}, "tasks"),
    ({"tasks": [], "project": "1.1"}, "tasks"),
    ({"tasks": "nope", "project": "1.1"}, "tasks"),
    ({"tasks": [{"id": 1, "data": {}}]}, "project"),
    ({"tasks": [{"id": 1, "data": {}}], "project": "abc.1700000000"}, "project id must be a whole number"),
    ({"tasks": [{"id": 1, "data": {}, "project": {"id": "x"}}]}, "project id must be a whole number"),
])
def test_malformed_predict_requests_get_json_errors(make_client, body, fragment):
    with make_client() as (client, _):
        resp = client.post("/predict", json=body)
    assert resp.status_code == 422
    assert resp.json()["status"] == 422 and fragment in resp.json()["detail"]


def test_non_json_body_is_a_json_error(make_client):
    with make_client() as (client, _):
        resp = client.post("/setup", content=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 422 and resp.headers["content-type"].startswith("application/json")
    assert "invalid request" in resp.json()["detail"]


@pytest.mark.parametrize("path", ["/train", "/validate", "/duplicate_model", "/delete", "/job_status"])
def test_legacy_routes_are_404_json(make_client, path):
    with make_client() as (client, _):
        resp = client.post(path, json={})
    assert resp.status_code == 404
    assert resp.json() == {"detail": f"no route {path} (legacy route; Label Studio 1.2x does not use it)",
                           "status": 404}


def test_versions_and_metrics_shapes(make_client, docroot):
    with make_client(local_files_document_root=docroot) as (client, _):
        v1 = setup_project(client, "1.1")
        v2 = setup_project(client, "2.1")
        listed = client.get("/versions").json()
        assert listed["versions"] == [v1, v2]  # what Label Studio reads
        assert [(d["model_version"], d["revision"], d["accuracy"]) for d in listed["details"]] == \
            [(v1, 0, None), (v2, 0, None)]
        assert client.get("/versions", params={"project": "2"}).json()["versions"] == [v2]
        client.post("/predict", json={"tasks": [local_task(1, "imgs/red0.png")], "project": "1.1"})
        metrics = client.get("/metrics").json()
    assert set(metrics) == {"worker_pid", "projects", "vlm", "counters"}
    project = metrics["projects"]["1"]
    assert project["model_version"] == v1
    assert project["training"]["state"] == "idle" and project["training"]["last_failure"] is None
    assert metrics["counters"]["predict_requests"] == 1 and metrics["counters"]["tasks_predicted"] == 1


def test_internal_errors_are_json_without_traceback(make_client, docroot, monkeypatch):
    from backend import embedding as embedding_module

    def explode(*args, **kwargs):
        raise RuntimeError("token=supersecret something broke")

    monkeypatch.setattr(embedding_module, "embed_tasks", explode)
    with make_client(local_files_document_root=docroot, raise_server_exceptions=False) as (client, _):
        resp = client.post("/predict", json={"tasks": [local_task(1, "imgs/red0.png")], "project": "1.1",
                                             "label_config": CHOICES_XML})
    assert resp.status_code == 500
    assert resp.json() == {"detail": "internal error (RuntimeError); see the backend log", "status": 500}
    assert "supersecret" not in resp.text


def test_model_state_and_loaded_once_per_process(make_settings, docroot):
    from fastapi.testclient import TestClient

    from backend.app import create_app

    loads = []
    runtime = Runtime(make_settings(local_files_document_root=docroot),
                      embedder_loader=lambda spec: loads.append(spec) or shared_loader(spec))
    with TestClient(create_app(runtime=runtime, preload=False)) as client:
        setup_project(client, "1.1", extra="value")
        for _ in range(3):
            client.post("/predict", json={"tasks": [local_task(1, "imgs/red0.png")], "project": "1.1"})
        model = runtime.model("1")
        assert not model.has("threshold")
        model.set("threshold", "0.7")
        assert runtime.model("1").get("threshold") == "0.7" and runtime.model("1").has("threshold")
        assert model.extra_params == {"extra": "value"}
        assert model.parsed_label_config["label"]["labels"] == ["red", "green", "blue"]
        assert model.label_interface.get_first_tag_occurence("Choices", "Image") == ("label", "image", "image")
        assert model.model_version.endswith("-p1-r0")
    assert loads == [runtime.default_spec]  # one load for three requests
    assert runtime.heads.loads == 1


def test_embedder_that_changed_under_a_project_is_a_409(make_client, docroot):
    with make_client(local_files_document_root=docroot) as (client, runtime):
        setup_project(client)
        client.post("/predict", json={"tasks": [local_task(1, "imgs/red0.png")], "project": "1.1"})
        with runtime.store._tx() as db:  # as if the weights behind the same spec were replaced
            db.execute("UPDATE projects SET embedder_id='open_clip:other-weights' WHERE id='1'")
        resp = client.post("/predict", json={"tasks": [local_task(1, "imgs/red0.png")], "project": "1.1"})
    assert resp.status_code == 409 and "other-weights" in resp.json()["detail"]


def test_unloadable_embedder_is_a_503_and_not_retried_on_every_request(make_settings, docroot):
    from fastapi.testclient import TestClient

    from backend.app import create_app
    from labelers.embedders import EmbedderUnavailable

    attempts = []

    def offline(spec):
        attempts.append(spec)
        raise EmbedderUnavailable(f"cannot load open_clip {spec}: no network")

    runtime = Runtime(make_settings(local_files_document_root=docroot), embedder_loader=offline)
    with TestClient(create_app(runtime=runtime, preload=False)) as client:
        setup_project(client)
        answers = [client.post("/predict", json={"tasks": [local_task(1, "imgs/red0.png")], "project": "1.1"})
                   for _ in range(3)]
        health = client.get("/health").json()["embedder"]
    assert [a.status_code for a in answers] == [503, 503, 503]
    assert "no network" in answers[0].json()["detail"]
    assert len(attempts) == 1
    assert health["loaded"] is False and "no network" in health["error"]


def test_auto_embedder_follows_the_labelers_rule(make_client, monkeypatch, tiny_clip_spec):
    # One rule for "auto" (labelers.embedders.resolve_auto_spec): LABELLOOP_CLIP, when on disk, is the CLIP used.
    monkeypatch.setenv("LABELLOOP_CLIP", tiny_clip_spec)
    with make_client(embedder="auto") as (client, runtime):
        embedder = client.get("/health").json()["embedder"]
    assert embedder["configured"] == "auto" and embedder["spec"] == tiny_clip_spec and embedder["zero_shot"]
    assert runtime.default_spec == tiny_clip_spec


def _ann(ann_id=1, task=1, result=None, **extra) -> dict:
    return {"id": ann_id, "task": task, "result": result if result is not None else choice_result("red"),
            "was_cancelled": False, **extra}


def _event(action="ANNOTATION_CREATED", project=None, **keys) -> dict:
    return {"action": action, "project": project or {"id": 1, "label_config": CHOICES_XML}, **keys}


MALFORMED_WEBHOOKS = {
    "string annotation id": _event(annotation=_ann("abc")),
    "nested annotation id": _event(annotation=_ann({"nested": None})),
    "fractional annotation id": _event(annotation=_ann(1.5)),
    "boolean annotation id": _event(annotation=_ann(True)),
    "annotation id past SQLite": _event(annotation=_ann(10 ** 30)),
    "negative annotation id": _event(annotation=_ann(-4)),
    "string task id": _event(annotation=_ann(task="abc")),
    "nested task id": _event(annotation=_ann(task={"id": "x"})),
    "task object without id": _event(annotation=_ann(task=None), task={"id": None, "data": {}}),
    "null annotation": _event(annotation=None),
    "null inside the annotation list": _event(action="ANNOTATIONS_CREATED", annotation=[None]),
    "result is not a list": _event(annotation=_ann(result="red")),
    "one bad annotation in a bulk event": _event(action="ANNOTATIONS_CREATED",
                                                 annotation=[_ann(7), _ann("eight")]),
    "string id in a deletion": _event(action="ANNOTATIONS_DELETED", annotations=[{"id": 99}, {"id": "x"}]),
    "null id in a deletion": _event(action="ANNOTATIONS_DELETED", annotations=[{"id": None}]),
    "deletion without ids": _event(action="ANNOTATIONS_DELETED"),
    "string project id": _event(project={"id": "abc", "label_config": CHOICES_XML}, annotation=_ann()),
    "nested project id": _event(project={"id": {"id": 1}}, annotation=_ann()),
    "project id with a timestamp that is not one": _event(project="abc.123", annotation=_ann()),
    "label config that is not text": _event(action="PROJECT_UPDATED", project={"id": 1, "label_config": 5}),
    "string task id in an import": _event(action="TASKS_CREATED", tasks=[{"id": "abc", "data": {"image": "x"}}]),
}


@pytest.mark.parametrize("name", list(MALFORMED_WEBHOOKS))
def test_malformed_webhook_payloads_are_4xx_json_and_store_nothing(make_client, name):
    with make_client(retrain="manual") as (client, runtime):
        setup_project(client)
        kept = _event(annotation=_ann(99), task=local_task(1, "imgs/red0.png"))
        assert client.post("/webhook", json=kept).status_code == 201
        resp = client.post("/webhook", json=MALFORMED_WEBHOOKS[name])
        assert 400 <= resp.status_code < 500, resp.text
        body = resp.json()
        assert body["status"] == resp.status_code and body["detail"].startswith("invalid")
        assert runtime.store.count_annotations("1") == 1                  # nothing stored, nothing lost
        assert [p.id for p in runtime.store.list_projects()] == ["1"]      # no project under a malformed id
        assert runtime.store.get_project("1").label_config == CHOICES_XML


@pytest.mark.parametrize("data", [
    {"annotation": _ann("abc")}, {"annotation": _ann(task=[3])}, {"annotation": _ann(result="red")},
    {"annotation": _ann(), "task": {"id": "x", "data": {}}},
])
def test_the_event_reader_refuses_malformed_ids_without_the_route(data):
    # backend.events is also called outside /webhook (LabelloopModel.fit): it checks ids itself.
    from backend.events import EventError, annotation_changes

    with pytest.raises(EventError, match="ANNOTATION_CREATED"):
        annotation_changes("ANNOTATION_CREATED", data, "image")
