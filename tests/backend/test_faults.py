"""Faults injected into a real `labelloop serve` (loopback, every wait bounded): a worker killed -9 mid-training,
a full MODEL_DIR, Label Studio down, a corrupt head file. In each, the served model and the stored annotations
survive, the failure is visible in /metrics or /health, and recovery needs no manual step."""
from __future__ import annotations

import os
import signal

import httpx
import pytest

from backend.training import DIED
from tests.backend.conftest import choice_result, local_task
from tests.backend.serving import Served, annotate, fresh_client, predict, project_metrics, setup, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.faults]

TASKS = [local_task(i + 1, f"imgs/{c}0.png") for i, c in enumerate(("red", "green", "blue"))]


def served_versions(client: httpx.Client, tasks=TASKS) -> set[str]:
    resp = predict(client, tasks)
    assert resp.status_code == 200, resp.text
    return {r["model_version"] for r in resp.json()["results"]}


def training_or_none(client: httpx.Client) -> dict | None:
    """Return project 1's /metrics training entry, or None when the connection was reset: uvicorn's supervisor
    kills a worker that misses its health-check ping (5 s; a replacement importing torch on a loaded machine can)
    and the requests that worker holds are reset. The served versions, the property under test, are checked on
    answered requests only."""
    try:
        return project_metrics(client)["training"]
    except httpx.TransportError:
        return None


def train_first_version(client: httpx.Client, served: Served) -> str:
    """Annotate one image per colour and wait for r1 to be served; returns it."""
    for ann_id, (task, label) in enumerate(zip(TASKS, ("red", "green", "blue")), start=1):
        assert annotate(client, ann_id, task["id"], task["data"]["image"].split("d=")[1], label).status_code == 201
    return settled_version(client, served)


def settled_version(client: httpx.Client, served: Served) -> str:
    """Wait until no run is queued or going in any worker (the debounce is 0, so a burst may take several runs;
    /metrics reads the training state from the store, whichever worker answers); returns the version then
    served."""
    def settled():
        metrics = project_metrics(client)
        return (metrics["training"]["state"] == "idle" and not metrics["model_version"].endswith("-r0")
                and metrics["model_version"])

    return wait_for(settled, "training to settle", log=served.log)


def test_kill_9_of_the_training_worker_resumes_the_retrain_and_keeps_serving(tmp_path, docroot, tiny_clip_spec):
    with Served(tmp_path, tiny_clip_spec, docroot, workers=2) as served, \
            fresh_client(served.url) as client:
        setup(client)
        v1 = train_first_version(client, served)
        served.fault("hang")  # the next fit waits, so the run is caught in the middle
        assert annotate(client, 10, 1, "imgs/red0.png", "green").status_code == 201
        # The run hangs in one worker; either worker's /metrics shows it, with its pid (from the store).
        running = wait_for(lambda: (training_or_none(client) or {}).get("running"), "a run to start", log=served.log)
        assert served_versions(client) == {v1}  # while it trains, the old version is served
        os.kill(running["pid"], signal.SIGKILL)
        served.fault("")
        # The other worker finds the run's pid gone (and uvicorn starts a replacement, which looks at start-up):
        # whoever takes the lock first marks the dead run failed and trains again.
        v2 = wait_for(lambda: (v := setup(client)) != v1 and v, "the resumed retrain", log=served.log)
        for _ in range(6):  # either worker, old or new, serves it
            assert served_versions(client) == {v2}
        # The run finishes after publishing (accuracy estimate, label audit).
        training = wait_for(lambda: (t := training_or_none(client)) and t["state"] == "idle" and t,
                            "the run to finish", log=served.log)
        log = served.log()
    assert "died with its process" in log
    assert v2 != v1
    assert training["last_failure"]["id"] == running["id"] and training["last_failure"]["error"].startswith(DIED)
    assert training["last_run"]["status"] == "succeeded" and training["last_run"]["model_version"] == v2
    assert training["running"] is None and training["interrupted"] == []
    assert project_metrics_annotations(served) == 4  # nothing the webhooks stored was lost


def project_metrics_annotations(served: Served) -> int:
    from backend.store import Store

    return Store(served.model_dir).count_annotations("1")


def mount_small_tmpfs(where, size: str = "2m") -> bool:
    """Mount a `size` tmpfs at `where` (root in a container that allows it); False when not permitted."""
    import subprocess

    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, timeout=30)
    return done.returncode == 0


def fill(folder) -> "os.PathLike":
    """Write a filler file into `folder` until its file system is full; returns the filler's path."""
    import errno

    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:  # unbuffered: nothing left to flush at close
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def test_model_dir_full_keeps_serving_shows_the_failure_and_recovers(tmp_path, docroot, tiny_clip_spec):
    """MODEL_DIR on a 2 MB tmpfs filled to the last byte in the middle of a retrain (a real full disk: SQLite,
    the embedding cache and the head files all see ENOSPC). Where mounting is not permitted (a container
    without CAP_SYS_ADMIN), the fault file makes the head save raise ENOSPC instead: the write the backend
    does when it publishes; the webhook refused for lack of space is then not exercised."""
    import subprocess

    state = tmp_path / "state"
    mounted = not os.environ.get("LABELLOOP_TEST_NO_MOUNT") and mount_small_tmpfs(state)  # env: try the fallback
    try:
        with Served(tmp_path, tiny_clip_spec, docroot, workers=1, model_dir=state) as served, \
                fresh_client(served.url) as client:
            setup(client)
            v1 = train_first_version(client, served)
            served.fault("hang")
            assert annotate(client, 10, 1, "imgs/red0.png", "green").status_code == 201  # stored, then trains
            wait_for(lambda: project_metrics(client)["training"]["last_run"]["status"] == "running",
                     "the run to start", log=served.log)
            filler = fill(state) if mounted else None
            served.fault("" if mounted else "enospc")  # the run goes on and meets the full disk
            if mounted:  # the backend finds the disk full, whatever write it was doing
                health = wait_for(lambda: (h := client.get("/health").json())["status"] == "DEGRADED" and h,
                                  "/health to report the full MODEL_DIR", log=served.log)
                assert any("is full" in p for p in health["problems"]), health
            else:  # only the head save fails: /health's probe write succeeds, /metrics shows the failed run
                wait_for(lambda: (project_metrics(client)["training"]["last_failure"] or {}).get("error"),
                         "/metrics to show the failed run", log=served.log)
            during = [served_versions(client) for _ in range(3)]
            new_task = predict(client, [local_task(50, "imgs/blue2.png")])  # not embedded before: not cached
            refused = annotate(client, 11, 2, "imgs/green1.png", "blue") if mounted else None
            if mounted:
                filler.unlink()
            else:
                served.fault("")
            # No new event: the run that met the full disk is tried again and publishes once space is back.
            v2 = wait_for(lambda: (v := setup(client)) != v1 and v, "a version after space is back",
                          log=served.log)
            after = served_versions(client)
            health_after = wait_for(lambda: (h := client.get("/health").json())["status"] == "UP" and h,
                                    "/health to clear", log=served.log)
            training = project_metrics(client)["training"]
            log = served.log()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(state)], timeout=30)
    assert during == [{v1}] * 3  # the served model stays
    assert new_task.status_code == 200 and new_task.json()["results"][0]["result"]  # and answers new tasks
    if mounted:  # an annotation arriving meanwhile is refused with a clear error, not a 500
        assert refused.status_code == 507 and "is full" in refused.json()["detail"]
    assert after == {v2} and not health_after["problems"]
    assert "MODEL_DIR is full" in log and "training again" in log
    # the failed run is in /metrics (recorded once SQLite had room again, when the disk was really full)
    assert "No space left on device" in training["last_failure"]["error"]
    assert training["last_run"]["status"] in ("succeeded", "running")


def test_label_studio_down_serves_from_cached_embeddings_and_reconnects(tmp_path, docroot, tiny_clip_spec):
    from tests.backend.conftest import COLORS, png
    from tests.backend.fakes import LEGACY_TOKEN, FakeLabelStudio, ServerThread

    images = {f"upload/1/{c}{i}.png": png(color, noise=12, seed=i) for c, color in COLORS.items() for i in range(2)}
    fake = FakeLabelStudio(image=png(), uploads=dict(images), old_uploads=dict(images))
    uploaded = [dict(local_task(i + 1, "x"), data={"image": f"/data/{key}"}) for i, key in enumerate(images)]
    known, new = uploaded[:3], uploaded[3:]
    ls = ServerThread(fake.app()).__enter__()
    env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": LEGACY_TOKEN}
    try:
        with Served(tmp_path, tiny_clip_spec, docroot, workers=1, env=env) as served, \
                fresh_client(served.url) as client:
            setup(client)
            before = predict(client, known).json()["results"]
            ls.__exit__()  # Label Studio goes down
            down_known = predict(client, known)
            down_new = predict(client, new)
            failed_down = client.get("/metrics").json()["counters"].get("tasks_failed")
            # An annotation arriving meanwhile is stored and trained on from the cached embeddings.
            v0 = setup(client)
            event = {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "task": known[0],
                     "annotation": {"id": 1, "task": 1, "project": 1, "result": choice_result("red")}}
            assert client.post("/webhook", json=event).status_code == 201
            v1 = wait_for(lambda: (v := setup(client)) != v0 and v, "a retrain while Label Studio is down",
                          log=served.log)
            ls = ServerThread(fake.app(), port=ls.port).__enter__()  # and comes back on the same address
            back_new = predict(client, new).json()["results"]
            log = served.log()
    finally:
        ls.__exit__()
    # Known tasks: answered from the cached embeddings, exactly as before.
    assert down_known.status_code == 200 and down_known.json()["results"] == before
    # New tasks: still a 200 (one bad image never sinks a batch), no prediction, and the log says why.
    assert down_new.status_code == 200
    assert all(r["result"] == [] and r["score"] is None for r in down_new.json()["results"])
    assert "no prediction for task 4" in log and "Label Studio at http://127.0.0.1" in log and "unreachable" in log
    assert failed_down == len(new)  # and /metrics counts them
    assert v1.endswith("-r1")
    # Back up: the same backend process fetches and predicts them, no restart or manual step.
    assert all(r["result"] and r["score"] is not None for r in back_new)


def test_a_corrupt_head_file_is_refused_and_the_previous_version_served(tmp_path, docroot, tiny_clip_spec):
    from backend.store import Store

    with Served(tmp_path, tiny_clip_spec, docroot, workers=1) as served, fresh_client(served.url) as client:
        setup(client)
        v1 = train_first_version(client, served)
        assert annotate(client, 10, 1, "imgs/red0.png", "green").status_code == 201
        v2 = settled_version(client, served)
        served.stop()
        head = Store(served.model_dir).get_version("1", v2).head_dir
        (tmp_path / "state" / "projects" / "1" / "heads" / head.rsplit("/", 1)[1] / "head.safetensors"
         ).write_bytes(b"\x00garbage, not a safetensors file")
        served.start()  # a fresh process: the damaged head is read from disk
        answered = served_versions(client)
        health = client.get("/health").json()
        # Start Training with nothing new still publishes, replacing the damaged version.
        client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
        v3 = wait_for(lambda: (v := setup(client)) not in (v1, v2) and v, "a version replacing the damaged one",
                      log=served.log)
        after = served_versions(client)
        log = served.log()
    assert v1 != v2 and answered == {v1}
    assert f"refused head {v2}" in log and head in log
    assert any("refused" in p and v2 in p for p in health["problems"])
    assert after == {v3}
