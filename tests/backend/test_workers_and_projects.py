"""`labelloop serve` with 2 worker processes and 3 projects, annotations arriving concurrently: each project
trains one run at a time across the workers (the per-project file lock), and after each retrain neither worker
serves a stale version. Real processes, loopback, bounded polling; no wall-clock thresholds."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from backend.store import Store
from tests.backend.serving import Served, annotate, fresh_client, predict, setup, wait_for
from tests.backend.conftest import local_task

pytestmark = [pytest.mark.slow, pytest.mark.faults]

PROJECTS = (1, 2, 3)
IMAGES = [(f"imgs/{c}{i}.png", c) for c in ("red", "green", "blue") for i in range(3)]


def tasks_of(project: int) -> list[dict]:
    return [local_task(i + 1, image, project) for i, (image, _) in enumerate(IMAGES)]


def send_round(url: str, first_id: int, relabel: bool) -> None:
    """Annotate every task of every project at once (3 projects x 9 tasks, from 6 threads)."""
    def one(job):
        project, i, (image, colour) = job
        label = {"red": "green", "green": "blue", "blue": "red"}[colour] if relabel and i % 3 == 0 else colour
        with httpx.Client(base_url=url, timeout=60) as client:
            resp = annotate(client, first_id + 100 * project + i, i + 1, image, label, project)
            assert resp.status_code == 201, resp.text

    jobs = [(p, i, img) for p in PROJECTS for i, img in enumerate(IMAGES)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(one, jobs))


def settled(client: httpx.Client, before: dict[int, str]) -> bool:
    """True once every project has a new version and no run queued or going in any worker."""
    projects = client.get("/metrics").json()["projects"]
    for p in PROJECTS:
        entry = projects.get(str(p))
        if entry is None or entry["model_version"] == before[p]:
            return False
        if entry["training"]["state"] != "idle":  # no run going and none owed, in any worker (from the store)
            return False
    return True


def served_by_each_worker(url: str, workers: int, attempts: int = 60) -> dict[int, dict[int, set[str]]]:
    """Return {worker pid: {project: versions its /predict answered}} once every worker has answered
    (each attempt is a new connection, which the kernel hands to either worker; at most `attempts`)."""
    seen: dict[int, dict[int, set[str]]] = {}
    for _ in range(attempts):
        with httpx.Client(base_url=url, timeout=60) as client:  # one connection: /metrics and /predict hit
            pid = client.get("/metrics").json()["worker_pid"]   # the same worker
            for p in PROJECTS:
                resp = predict(client, tasks_of(p), p)
                assert resp.status_code == 200, resp.text
                seen.setdefault(pid, {}).setdefault(p, set()).update(r["model_version"] for r in resp.json()["results"])
        if len(seen) == workers:
            return seen
    raise AssertionError(f"only workers {sorted(seen)} answered in {attempts} connections")


def no_overlapping_runs(store: Store, project: str) -> bool:
    runs = sorted(store.runs(project, limit=500), key=lambda r: r["started_at"])
    return all(a["finished_at"] is not None and a["finished_at"] <= b["started_at"] for a, b in zip(runs, runs[1:]))


def test_two_workers_three_projects_train_one_run_per_project_and_serve_no_stale_version(
        tmp_path, docroot, tiny_clip_spec):
    with Served(tmp_path, tiny_clip_spec, docroot, workers=2) as served, fresh_client(served.url) as client:
        store = Store(served.model_dir)
        versions = {p: setup(client, p) for p in PROJECTS}
        served_after = []
        for round_, relabel in enumerate((False, True)):
            send_round(served.url, 1000 * (round_ + 1), relabel)
            wait_for(lambda: settled(client, versions), f"round {round_}: every project retrained",
                     timeout=240, every=0.2, log=served.log)
            versions = {p: store.current_version(str(p)) for p in PROJECTS}
            served_after.append((dict(versions), served_by_each_worker(served.url, workers=2)))
        runs = {p: store.runs(str(p), limit=500) for p in PROJECTS}
    for current, by_worker in served_after:
        for pid, answered in by_worker.items():
            assert answered == {p: {current[p]} for p in PROJECTS}, (pid, answered, current)
    for p in PROJECTS:
        assert no_overlapping_runs(store, str(p)), runs[p]  # one run at a time per project, across workers
        assert all(r["status"] in ("succeeded", "skipped") for r in runs[p]), runs[p]
    assert all(not current[p].endswith("-r0") for current, _ in served_after for p in PROJECTS)
