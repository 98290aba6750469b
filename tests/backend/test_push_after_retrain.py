"""After a retrain, LABELLOOP_PUSH_PREDICTIONS pushes to Label Studio only what /predict serves the project with
(backend.routing.Route): head classifications for a head project; nothing for a relabel, VLM or box project, with
the reason in the run's note and the log. Box projects are not retrained at all, as /webhook answers."""
from __future__ import annotations

import logging
from contextlib import contextmanager

from backend.store import Annotation
from backend.versions import initial_version
from tests.backend.conftest import MULTI_XML, annotation_event, choice_result, png, setup_project
from tests.backend.fakes import LEGACY_TOKEN, FakeLabelStudio, ServerThread
from tests.backend.test_routing import BOXES_XML
from tests.backend.test_webhook_training import LABELS, TASKS, runs

BOXES_AND_CHOICES_XML = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
                         '<Choice value="red"/><Choice value="green"/><Choice value="blue"/></Choices>'
                         '<RectangleLabels name="box" toName="image"><Label value="red"/><Label value="green"/>'
                         '</RectangleLabels></View>')


@contextmanager
def _pushing(make_client, docroot, fake):
    """(client, runtime) of the app pushing predictions after each retrain to the fake Label Studio `fake`."""
    with ServerThread(fake.app()) as ls, make_client(
            local_files_document_root=docroot, label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN,
            warm_cache=False, push_predictions=True, retrain_debounce_seconds=2.0) as (client, runtime):
        yield client, runtime


def _store_box_project(runtime, xml: str, extra: dict, result) -> None:
    """A box project with one stored annotation per task, and a retrain asked for (as one queued before the
    project's /setup made it a box project would be)."""
    spec = runtime.settings.embedder
    runtime.store.ensure_project("1", spec, initial_version(spec, "1"), label_config=xml, extra_params=extra)
    runtime.store.remember_tasks("1", [(t["id"], t["data"]["image"]) for t in TASKS])
    runtime.store.upsert_annotations("1", [Annotation(100 + t["id"], t["id"], result(t)) for t in TASKS])
    runtime.queue.request("1", "START_TRAINING")
    assert runtime.queue.wait_idle(120)


def test_a_relabel_project_is_retrained_but_gets_no_head_classifications_pushed(make_client, docroot, caplog):
    fake = FakeLabelStudio(image=png(), tasks=TASKS, versions_with_predictions=set())
    caplog.set_level(logging.INFO, logger="backend")
    with _pushing(make_client, docroot, fake) as (client, runtime):
        relabel = setup_project(client, xml=MULTI_XML, relabel={"regions": "grid"})
        for i, task in enumerate(TASKS):
            event = annotation_event(100 + i, task, LABELS[task["id"]], xml=MULTI_XML,
                                     result=choice_result(LABELS[task["id"]], "tags"))
            assert client.post("/webhook", json=event).status_code == 201
        assert runtime.queue.wait_idle(120)
        last, head = runs(runtime)[0], runtime.store.current_version("1")
        served = runtime.served_version("1")
    assert last["status"] == "succeeded" and not head.endswith("-p1-r0")  # the head that scores the regions
    assert served.startswith(head + "-relabel-") and served != relabel
    assert fake.imported_predictions == [] and fake.project_versions == {}
    assert "predictions not pushed: /predict serves this project relabel suggestions" in last["note"]
    assert any(r.levelno == logging.INFO and "predictions not pushed" in r.getMessage() for r in caplog.records)


def test_a_box_only_project_is_not_retrained_and_nothing_is_logged_as_an_error(make_client, docroot, caplog):
    fake = FakeLabelStudio(image=png(), tasks=TASKS, versions_with_predictions=set())
    box = [{"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": 32,
            "original_height": 32, "value": {"x": 10, "y": 10, "width": 50, "height": 50, "rectanglelabels": ["red"]}}]
    caplog.set_level(logging.INFO, logger="backend")
    with _pushing(make_client, docroot, fake) as (_, runtime):
        _store_box_project(runtime, BOXES_XML, {}, lambda task: box)
        last = runs(runtime)[0]
        version = runtime.store.current_version("1")
    assert last["status"] == "skipped" and last["error"] is None
    assert "box projects are not retrained" in last["note"] and version.endswith("-p1-r0")
    assert fake.imported_predictions == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]


def test_a_box_project_with_a_choices_control_gets_no_head_classifications(make_client, docroot):
    # Its /predict serves boxes (extra_params "boxes"): a head trained on its Choices would be served nowhere.
    fake = FakeLabelStudio(image=png(), tasks=TASKS, versions_with_predictions=set())
    with _pushing(make_client, docroot, fake) as (_, runtime):
        _store_box_project(runtime, BOXES_AND_CHOICES_XML, {"boxes": {}},
                           lambda task: choice_result(LABELS[task["id"]]))
        last = runs(runtime)[0]
        version = runtime.store.current_version("1")
    assert last["status"] == "skipped" and "box projects are not retrained" in last["note"]
    assert version.endswith("-p1-r0") and fake.imported_predictions == []


def test_a_vlm_project_trains_its_head_but_gets_no_head_classifications_pushed(make_client, docroot):
    from tests.backend.test_webhook_training import annotate_all

    fake = FakeLabelStudio(image=png(), tasks=TASKS, versions_with_predictions=set())
    with _pushing(make_client, docroot, fake) as (client, runtime):
        served = setup_project(client, predictor="vlm")  # /setup never loads the VLM
        annotate_all(client)
        assert runtime.queue.wait_idle(120)
        last, head = runs(runtime)[0], runtime.store.current_version("1")
    assert last["status"] == "succeeded" and not head.endswith("-p1-r0") and served.startswith("vlm-")
    assert fake.imported_predictions == [] and "predictions not pushed: the VLM pre-annotates" in last["note"]
