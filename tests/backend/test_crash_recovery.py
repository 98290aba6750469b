"""A process that dies mid-training: at the next start-up its run is marked failed (visible in /metrics), the
head folders it left are deleted, and the retrain it owed runs once, even with several workers starting."""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from filelock import FileLock
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.runtime import Runtime
from backend.training import DIED, RESUME
from tests.backend.conftest import setup_project, shared_loader
from tests.backend.test_webhook_training import annotate_all, predict

REPO = Path(__file__).resolve().parents[2]


def trained_model_dir(settings) -> str:
    """Connect project 1 and train it once on every task; returns the published version (r1)."""
    with TestClient(create_app(runtime=Runtime(settings, embedder_loader=shared_loader), preload=False)) as client:
        setup_project(client)
        annotate_all(client)  # the "manual" retrain policy stores them without training
        client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
        assert client.app.state.runtime.queue.wait_idle(120)
        version = setup_project(client)
    assert version.endswith("-p1-r1")
    return version


def die_mid_run(model_dir, project: str = "1", runs: int = 1) -> None:
    """In a child process, do what a webhook and a training process do up to the moment it is killed: store
    the annotation that asked for the retrain (task 1 relabelled, so the owed retrain has something new),
    record the request, start a run and write a head into a staging folder, plus the renamed-but-unpublished
    "r<n>" folder a kill between rename and publish leaves. The process then exits without any cleanup."""
    script = textwrap.dedent(f"""
        import os
        from backend.store import Annotation, Store
        store = Store({str(model_dir)!r})
        heads = store.heads_dir({project!r})
        for i in range({runs}):
            store.upsert_annotations({project!r}, [Annotation(9000 + i, 1, [{{"from_name": "label",
                "to_name": "image", "type": "choices", "value": {{"choices": ["green"]}}}}])])
            store.request_training({project!r})
            store.start_run({project!r}, "ANNOTATION_CREATED")
            (heads / ".r9-deadbeef").mkdir(parents=True, exist_ok=True)
            (heads / ".r9-deadbeef" / "head.safetensors").write_bytes(b"half written")
            (heads / "r9").mkdir(exist_ok=True)
        os._exit(9)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=60)
    assert done.returncode == 9


def heads_on_disk(runtime, project: str = "1") -> list[str]:
    return sorted(p.name for p in runtime.store.heads_dir(project).iterdir())


def test_restart_fails_the_dead_run_and_finishes_the_retrain_it_owed(make_settings, docroot):
    settings = make_settings(local_files_document_root=docroot, retrain="manual")
    v1 = trained_model_dir(settings)
    die_mid_run(settings.model_dir)
    runtime = Runtime(settings, embedder_loader=shared_loader)
    with TestClient(create_app(runtime=runtime, preload=False)) as client:
        assert runtime.queue.wait_idle(120)
        metrics = client.get("/metrics").json()["projects"]["1"]
        v2 = setup_project(client)
        after = predict(client)
    runs = runtime.store.runs("1", limit=10)
    assert [r["status"] for r in runs[:3]] == ["succeeded", "failed", "succeeded"]
    assert runs[0]["reason"] == RESUME and runs[0]["model_version"] == v2  # no new event was needed
    dead = metrics["training"]["last_failure"]
    assert dead["id"] == runs[1]["id"] and dead["error"].startswith(DIED)
    assert metrics["training"]["state"] == "idle" and metrics["training"]["last_run"]["status"] == "succeeded"
    assert v2 != v1 and v2.endswith("-p1-r2") and {r["model_version"] for r in after} == {v2}
    assert heads_on_disk(runtime) == ["r1", "r2"]  # the staging folder and the unpublished r9 are gone
    requested, trained = runtime.store.pending_seq("1")
    assert requested == trained


def test_a_run_of_a_live_process_is_left_alone(make_settings, docroot):
    settings = make_settings(local_files_document_root=docroot, retrain="manual")
    v1 = trained_model_dir(settings)
    other = Runtime(settings, embedder_loader=shared_loader)  # another worker, in the middle of a run
    busy = FileLock(str(other.store.model_dir / "locks" / "train-1.lock"))
    busy.acquire()
    try:
        requested = other.store.request_training("1")
        run_id = other.store.start_run("1", "ANNOTATION_CREATED")
        staging = other.store.heads_dir("1") / ".r2-0123abcd"
        staging.mkdir()
        runtime = Runtime(settings, embedder_loader=shared_loader)
        with TestClient(create_app(runtime=runtime, preload=False)) as client:
            training = client.get("/metrics").json()["projects"]["1"]["training"]
            assert training["state"] == "running" and training["last_run"]["status"] == "running"  # another worker's
            assert runtime.store.runs("1", limit=1)[0]["status"] == "running" and staging.is_dir()
            # The live worker finishes its run and covers the request.
            staging.rmdir()
            other.store.finish_run(run_id, "skipped")
            other.store.mark_trained("1", requested)
            busy.release()
            assert runtime.queue.wait_idle(60)
            training = client.get("/metrics").json()["projects"]["1"]["training"]
    finally:
        if busy.is_locked:
            busy.release()
    runs = runtime.store.runs("1", limit=10)
    assert runs[0]["id"] == run_id and runs[0]["status"] == "skipped"  # not marked failed, no second run
    assert training["state"] == "idle" and training["last_failure"] is None
    assert runtime.store.current_version("1") == v1


def test_workers_starting_together_resume_the_project_once(make_settings, docroot):
    settings = make_settings(local_files_document_root=docroot, retrain="manual")
    trained_model_dir(settings)
    die_mid_run(settings.model_dir)
    workers = [Runtime(settings, embedder_loader=shared_loader) for _ in range(3)]
    threads = [threading.Thread(target=w.start, kwargs={"preload": False}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert all(w.queue.wait_idle(120) for w in workers)
    finally:
        for w in workers:
            w.close()
    store = Runtime(settings, embedder_loader=shared_loader).store
    runs = store.runs("1", limit=10)
    assert [r["status"] for r in runs[:3]] == ["succeeded", "failed", "succeeded"]
    assert sum(r["reason"] == RESUME for r in runs) == 1
    assert [v.revision for v in store.list_versions("1")] == [0, 1, 2]


def test_a_run_that_keeps_killing_its_process_is_not_resumed_forever(make_settings, docroot, caplog):
    settings = make_settings(local_files_document_root=docroot, retrain="manual")
    v1 = trained_model_dir(settings)
    die_mid_run(settings.model_dir, runs=2)  # died, was resumed, died again
    runtime = Runtime(settings, embedder_loader=shared_loader)
    with caplog.at_level(logging.ERROR, logger="backend.training"):
        with TestClient(create_app(runtime=runtime, preload=False)) as client:
            assert runtime.queue.wait_idle(60)
            training = client.get("/metrics").json()["projects"]["1"]["training"]
            assert setup_project(client) == v1
            # A new request still trains.
            client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
            assert runtime.queue.wait_idle(120)
            assert setup_project(client).endswith("-p1-r2")
    assert training["state"] == "idle" and training["last_failure"]["error"].startswith(DIED)
    assert training["runs"]["failed"] == 2 and training["last_run"]["status"] == "failed"
    assert "not resuming training" in caplog.text
    assert heads_on_disk(runtime) == ["r1", "r2"]
