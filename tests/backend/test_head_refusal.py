"""A head folder damaged on disk is refused with a clear log line (and in /health), the newest earlier version
that loads is served, and the next retrain serves again without a manual step (backend.heads.HeadCache)."""
from __future__ import annotations

import logging

import pytest

from backend.runtime import Runtime
from tests.backend.conftest import annotation_event, setup_project, shared_loader
from tests.backend.test_webhook_training import LABELS, TASKS, annotate_all, predict


def two_versions(make_client, settings_overrides) -> tuple[str, str, str]:
    """Train on every task, then again after one relabel; returns (version before, last version, its head folder)."""
    with make_client(**settings_overrides) as (client, runtime):
        setup_project(client)
        annotate_all(client)
        assert runtime.queue.wait_idle(120)
        v1 = setup_project(client)
        client.post("/webhook", json=annotation_event(500, TASKS[0], "green"))
        assert runtime.queue.wait_idle(120)
        v2 = setup_project(client)
        head_dir = runtime.store.get_version("1", v2).head_dir
    assert v1 != v2
    return v1, v2, head_dir


def damage(head_dir: str, how: str) -> None:
    from pathlib import Path

    weights = Path(head_dir) / "head.safetensors"
    data = bytearray(weights.read_bytes())
    if how == "truncated":
        weights.write_bytes(bytes(data[:40]))
    else:  # one flipped byte in the last weight: still a valid safetensors file, only the digest sees it
        data[-3] ^= 0xFF
        weights.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_a_damaged_head_is_refused_and_the_previous_version_served(make_client, make_settings, docroot, caplog,
                                                                   how):
    overrides = dict(local_files_document_root=docroot)
    v1, v2, head_dir = two_versions(make_client, overrides)
    damage(head_dir, how)
    runtime = Runtime(make_settings(**overrides), embedder_loader=shared_loader)  # a restart: nothing in memory
    with caplog.at_level(logging.ERROR, logger="backend.heads"):
        with make_client(runtime=runtime) as (client, _):
            served = {r["model_version"] for r in predict(client)}
            health = client.get("/health").json()
            # the next retrain publishes a new version, which is served and ends the problem
            client.post("/webhook", json=annotation_event(501, TASKS[1], LABELS[TASKS[1]["id"]]))
            assert runtime.queue.wait_idle(120)
            v3 = setup_project(client)
            after = {r["model_version"] for r in predict(client)}
            health_after = client.get("/health").json()
    assert served == {v1}
    assert f"refused head {v2}" in caplog.text and head_dir in caplog.text
    assert health["status"] == "DEGRADED" and any(v2 in p and "refused" in p for p in health["problems"])
    assert v3 not in (v1, v2) and after == {v3}
    assert not any("refused" in p for p in health_after["problems"])
    assert runtime.store.count_annotations("1") == len(TASKS) + 2  # no annotation lost
