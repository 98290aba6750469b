"""extra_params similar_to: "more like this" in Label Studio. 200 tasks in 10 clusters (the fake image-only
embedder of test_cold_start); with a reference set, ascending score shows the reference's cluster first."""
from __future__ import annotations

from backend.similar import parse_reference
from tests.backend.conftest import setup_project
from tests.backend.test_cold_start import PER_CLASS, XML, pool, predict, warmed  # noqa: F401 (fixtures)

PROJECT = "1.1700000000"


def _setup(client, **extra):
    return client.post("/setup", json={"project": PROJECT, "schema": XML, "extra_params": extra})


def test_first_tasks_by_score_are_the_reference_tasks_cluster(warmed):
    client, runtime, tasks, truth = warmed
    cold = predict(client, tasks)
    reference = 57  # class 2 ("bird"), far from the first page of the cold-start order
    assert _setup(client, similar_to=reference).status_code == 200
    by_task = predict(client, tasks)
    ranked = sorted(by_task, key=lambda t: by_task[t]["score"])
    assert ranked[0] == reference and by_task[reference]["score"] == 0
    assert {truth[t] for t in ranked[:PER_CLASS]} == {truth[reference]}  # the whole cluster, nothing else
    assert sorted(by_task[t]["score"] for t in by_task) == [i / len(tasks) for i in range(len(tasks))]
    # pre-annotations unchanged: the same results as without a reference
    assert [by_task[t]["result"] for t in sorted(by_task)] == [cold[t]["result"] for t in sorted(cold)]
    # the same pool and reference: served from memory; a string id means the same task
    predict(client, tasks[:10])
    assert runtime.similar.computed == 1
    assert _setup(client, similar_to="57").status_code == 200
    assert sorted(predict(client, tasks), key=lambda t: by_task[t]["score"])[:PER_CLASS] == ranked[:PER_CLASS]
    # unset: back to the cold-start order
    assert _setup(client).status_code == 200
    assert predict(client, tasks) == cold


def test_an_image_path_reference_is_embedded_with_the_projects_embedder(warmed):
    client, runtime, tasks, truth = warmed
    assert _setup(client, similar_to="/data/local-files/?d=imgs/130.png").status_code == 200
    by_task = predict(client, tasks)
    ranked = sorted(by_task, key=lambda t: by_task[t]["score"])
    assert ranked[0] == 130 and {truth[t] for t in ranked[:PER_CLASS]} == {truth[130]}


def test_an_unknown_task_id_is_refused_at_setup_with_a_message(warmed):
    client, runtime, tasks, truth = warmed
    resp = _setup(client, similar_to=9999)
    assert resp.status_code == 422
    assert "similar_to: task 9999 is not a task of project 1" in resp.text and "200 embedded" in resp.text


def test_an_unreadable_reference_is_refused_at_predict_never_ignored(warmed):
    client, runtime, tasks, truth = warmed
    assert _setup(client, similar_to="/data/local-files/?d=imgs/missing.png").status_code == 200
    resp = client.post("/predict", json={"tasks": tasks[:3], "project": PROJECT})
    assert resp.status_code == 422
    assert "similar_to: cannot embed '/data/local-files/?d=imgs/missing.png'" in resp.text


def test_a_reference_that_is_neither_id_nor_path_is_refused():
    import pytest

    from backend.labels import LabelConfigError

    assert parse_reference({"similar_to": " 12 "}) == 12 and parse_reference({}) is None
    for bad in ([3], 1.5, "", True):
        with pytest.raises(LabelConfigError, match="similar_to must be a task id"):
            parse_reference({"similar_to": bad})


def test_setup_before_anything_is_embedded_defers_the_check_to_predict(make_client, docroot):
    from tests.backend.conftest import CHOICES_XML, local_task

    with make_client(warm_cache=False, local_files_document_root=docroot) as (client, runtime):
        setup_project(client, PROJECT, CHOICES_XML, similar_to=5)  # nothing embedded yet: cannot judge
        tasks = [local_task(i + 1, f"imgs/{c}0.png") for i, c in enumerate(["red", "green", "blue"])]
        resp = client.post("/predict", json={"tasks": tasks, "project": PROJECT})
        assert resp.status_code == 422 and "similar_to: task 5 is not a task of project 1" in resp.text
