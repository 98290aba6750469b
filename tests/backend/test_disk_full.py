"""A full MODEL_DIR, in process (the real tmpfs case is tests/backend/test_faults.py): a webhook is refused with
507 naming MODEL_DIR, /predict still answers, and a retrain that met the full disk runs again by itself."""
from __future__ import annotations

import errno
import os
import sqlite3

from backend import training
from backend.store import disk_full
from tests.backend.conftest import annotation_event, setup_project
from tests.backend.test_webhook_training import TASKS, annotate_all, predict, runs
from tests.waiting import eventually


def test_disk_full_errors_are_recognised():
    assert disk_full(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert disk_full(sqlite3.OperationalError("database or disk is full"))
    assert disk_full(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(sqlite3.OperationalError("database is locked"))


def test_a_webhook_on_a_full_disk_is_refused_with_507_and_predict_still_answers(make_client, docroot, monkeypatch):
    with make_client(local_files_document_root=docroot) as (client, runtime):
        setup_project(client)
        annotate_all(client)
        assert runtime.queue.wait_idle(120)
        served = {r["model_version"] for r in predict(client)}

        def full(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(runtime.store, "upsert_annotations", full)
        monkeypatch.setattr(runtime.store, "kv_set", full)  # the version sync's bookkeeping in /predict
        refused = client.post("/webhook", json=annotation_event(900, TASKS[0], "green"))
        still = {r["model_version"] for r in predict(client)}
    assert refused.status_code == 507
    assert str(runtime.store.model_dir) in refused.json()["detail"] and "nothing was stored" in refused.json()["detail"]
    assert still == served


def test_a_retrain_that_meets_a_full_disk_runs_again_without_a_new_event(make_client, docroot, monkeypatch):
    from labelers.head import ClassifierHead

    monkeypatch.setattr(training, "DISK_FULL_RETRY_SECONDS", 0.2)
    save = ClassifierHead.save
    calls = []

    def save_on_a_full_disk(self, folder):
        calls.append(folder)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
        return save(self, folder)

    monkeypatch.setattr(ClassifierHead, "save", save_on_a_full_disk)
    with make_client(local_files_document_root=docroot, retrain="manual") as (client, runtime):
        v0 = setup_project(client)
        annotate_all(client)
        client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
        assert eventually(lambda: setup_project(client) != v0, timeout=60)
        assert runtime.queue.wait_idle(60)
        history = runs(runtime)
    assert len(calls) == 2
    assert [r["status"] for r in history] == ["succeeded", "failed"]
    assert "No space left on device" in history[1]["error"]
    requested, trained = runtime.store.pending_seq("1")
    assert requested == trained


def test_new_tasks_are_still_predicted_when_the_disk_is_full(make_client, docroot, monkeypatch):
    """Nothing /predict writes (task URLs, content keys, the embedding cache) is worth the predictions: on a
    full disk new tasks are embedded uncached and answered, and /health says MODEL_DIR is full."""
    with make_client(local_files_document_root=docroot) as (client, runtime):
        setup_project(client)

        def full(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

        for name in ("remember_tasks", "set_content_keys", "set_task_error", "kv_set"):
            monkeypatch.setattr(runtime.store, name, full)
        monkeypatch.setattr(runtime.cache, "put_many", full)
        monkeypatch.setattr(runtime.store, "space_problem", lambda: runtime.store._full)  # no real probe
        results = predict(client)
        health = client.get("/health").json()
    assert len(results) == len(TASKS) and all(r["result"] and r["score"] is not None for r in results)
    assert runtime.cache.count() == 0  # embedded, not cached
    assert health["status"] == "DEGRADED" and any("disk is full" in p for p in health["problems"])
