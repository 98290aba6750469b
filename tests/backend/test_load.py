"""A small bounded run of benchmarks/bench_load.py against a real `labelloop serve` (2 workers): concurrent
/predict batches while annotation webhooks retrain the project: no error, no 5xx, and a new model_version
served during the load."""
from __future__ import annotations

import asyncio

import pytest

from benchmarks.bench_load import Backend, annotation_bodies, run_load, synthetic_project

pytestmark = [pytest.mark.slow, pytest.mark.faults]

CLASSES = ["red", "green", "blue"]


def test_predict_under_load_while_annotations_retrain(tmp_path, tiny_clip_spec):
    model_dir = tmp_path / "state"
    backend = Backend(model_dir, tiny_clip_spec, workers=2, debounce=0.2)
    try:
        tasks = synthetic_project(backend, model_dir, tiny_clip_spec, 300, CLASSES)
        bodies = annotation_bodies(tasks, CLASSES, count=3, per_event=6)
        result = asyncio.run(run_load(backend.url, tasks, clients=6, requests=4, batch=50, webhooks=bodies,
                                      every=0.3, max_requests=200, deadline=240))
    finally:
        backend.stop()
    summary = result.summary()
    assert not result.timed_out, summary
    assert result.errors == [] and set(result.statuses) == {200}, result.errors[:3]
    assert result.webhook_statuses == {201: 3}
    assert summary["requests"] >= 6 * 4
    # r0 answered first, then at least one retrained version, all while the clients kept predicting
    assert result.versions[0].endswith("-p1-r0") and len(result.versions) >= 2
    assert all(not v.endswith("-r0") for v in result.versions[1:])
