"""Training state across workers: two Store handles on one MODEL_DIR are two worker processes. What /metrics and
`labelloop status` say about training comes from SQLite (not the answering worker's queue), and a run whose
process died (kill -9) is found by a live worker and resumed, with no restart and no manual step."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from backend.status import _training
from backend.store import STALE_RUN_SECONDS, Store
from backend.training import DIED, RESUME, TrainingQueue
from tests.backend.conftest import setup_project
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]


def two_workers(tmp_path) -> tuple[Store, Store]:
    """Return two Store handles on one MODEL_DIR (as two worker processes have), with project 1 connected."""
    first = Store(tmp_path / "model_dir")
    first.ensure_project("1", "fake-embedder", "fake-p1-r0")
    return first, Store(tmp_path / "model_dir")


def recording_queue(store: Store, calls: list, release: threading.Event | None = None) -> TrainingQueue:
    """A queue whose train function records its reasons and, given `release`, blocks until it is set."""
    def train(project, full_sync, reasons):
        calls.append(set(reasons))
        if release is not None:
            assert release.wait(30), "the test never released the run"
        return None, 0, "nothing to learn (test)"

    queue = TrainingQueue(store, train, debounce=0.0)
    queue.heartbeat_seconds = queue.stall_check_seconds = 0.05
    return queue


def die_mid_run(model_dir: Path) -> None:
    """In a child process: record a retrain request, start its run, then die without any cleanup (kill -9)."""
    script = textwrap.dedent(f"""
        import os
        from backend.store import Store
        store = Store({str(model_dir)!r})
        seq = store.request_training("1")
        store.start_run("1", "ANNOTATION_CREATED", covers_seq=seq)
        os._exit(9)
    """)
    assert subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=60).returncode == 9


def test_metrics_of_one_worker_show_the_run_another_worker_is_running(make_client, docroot):
    """Worker A trains (blocked mid-run); worker B answers /metrics: "running", with A's run and pid, and "idle"
    only once A's run has ended. The old /metrics asked B's own queue and said "queued"."""
    calls, release = [], threading.Event()
    with make_client(local_files_document_root=docroot, retrain="manual") as (client, runtime_b):
        setup_project(client)
        worker_a = recording_queue(Store(runtime_b.store.model_dir), calls, release)
        worker_a.start()
        try:
            worker_a.request("1", "ANNOTATION_CREATED")
            assert eventually(lambda: calls, timeout=30)
            during = client.get("/metrics").json()["projects"]["1"]["training"]
            release.set()
            assert worker_a.wait_idle(30)
            after = client.get("/metrics").json()["projects"]["1"]["training"]
        finally:
            release.set()
            worker_a.stop()
    assert runtime_b.queue.status("1") == "idle"  # B's own queue never had the run
    assert during["state"] == "running" and during["running"]["pid"] == os.getpid()
    assert during["running"]["id"] == during["last_run"]["id"] and during["running"]["covers_seq"] == 1
    assert during["requested_seq"] == 1 and during["trained_seq"] == 0 and during["interrupted"] == []
    assert after["state"] == "idle" and after["running"] is None and after["trained_seq"] == 1
    assert after["last_run"]["status"] == "skipped"


def test_a_run_killed_in_another_worker_is_resumed_by_a_live_worker_without_a_restart(tmp_path):
    store_a, store_b = two_workers(tmp_path)
    calls = []
    live = recording_queue(store_b, calls)
    live.start()  # started before the other worker dies: its start-up resume has nothing to find
    try:
        die_mid_run(store_a.model_dir)
        resumed = eventually(lambda: calls and store_b.training_state("1").state == "idle", timeout=30)
    finally:
        live.stop()
    assert resumed, store_b.runs("1")
    runs = store_b.runs("1")
    assert [r["status"] for r in runs] == ["skipped", "failed"] and runs[1]["error"].startswith(DIED)
    assert calls == [{RESUME}] and runs[0]["pid"] == os.getpid()
    assert store_b.pending_seq("1") == (1, 1)


def test_a_dead_pid_or_a_stale_heartbeat_marks_a_run_interrupted(tmp_path):
    store_a, store_b = two_workers(tmp_path)
    die_mid_run(store_a.model_dir)  # its pid is gone, its heartbeat is fresh
    dead = store_b.training_state("1")
    assert dead.state == "queued" and dead.running is None and len(dead.interrupted) == 1
    assert "died with pid" in _training(dead.as_dict())
    # A run of a live pid on another machine: alive while its heartbeat is fresh, dead once it is stale.
    store_b.fail_abandoned_runs("1", DIED)
    run_id = store_a.start_run("1", "ANNOTATION_CREATED", covers_seq=1)
    store_a._conn().execute("UPDATE training_runs SET host='another-machine', pid=1 WHERE id=?", (run_id,))
    fresh = store_b.training_state("1")
    stale = store_b.training_state("1", now=time.time() + STALE_RUN_SECONDS + 1)
    assert fresh.state == "running" and fresh.running["id"] == run_id and fresh.interrupted == []
    assert stale.state == "queued" and stale.running is None and [r["id"] for r in stale.interrupted] == [run_id]
    assert store_b.projects_to_resume(owed_for=60.0, now=time.time() + STALE_RUN_SECONDS + 1) == ["1"]
    assert store_b.projects_to_resume(owed_for=60.0) == []  # alive: nothing for another worker to take over


def test_a_long_run_keeps_its_heartbeat_fresh(tmp_path):
    store_a, store_b = two_workers(tmp_path)
    calls, release = [], threading.Event()
    worker = recording_queue(store_a, calls, release)
    worker.start()
    try:
        worker.request("1", "ANNOTATION_CREATED")
        assert eventually(lambda: calls, timeout=30)
        first = store_b.training_state("1").running["heartbeat_at"]
        beat = eventually(lambda: store_b.training_state("1").running["heartbeat_at"] > first, timeout=10)
    finally:
        release.set()
        worker.stop()
    assert beat


def test_requests_left_by_a_worker_that_died_before_running_them_are_trained(tmp_path):
    """A worker stored an annotation and recorded its request, then died before its debounced run started: no
    run is marked running, but the request stays owed. A live worker takes it once it is older than the
    longest a live worker may defer it, not before (that would break the debounce)."""
    store_a, store_b = two_workers(tmp_path)
    store_a.request_training("1")  # the dying worker's request; its queue entry died with it
    assert store_b.training_state("1").state == "queued"
    assert store_b.projects_to_resume(owed_for=60.0) == []  # its worker may still be debouncing
    assert store_b.projects_to_resume(owed_for=60.0, now=time.time() + 61) == ["1"]
    calls = []
    live = recording_queue(store_b, calls)
    live.owed_grace = 0.2
    live.start()
    try:
        # start-up resumes it anyway; a second request, while the queue runs, is the periodic check's
        assert eventually(lambda: calls and live.status("1") == "idle", timeout=30)
        store_a.request_training("1")
        trained = eventually(lambda: len(calls) == 2 and store_b.training_state("1").state == "idle", timeout=30)
    finally:
        live.stop()
    assert trained and calls == [{RESUME}, {RESUME}]
    assert store_b.pending_seq("1") == (2, 2)
