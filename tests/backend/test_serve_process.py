"""`labelloop serve` as a real process with two uvicorn workers: settings reach the spawned workers."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.backend.conftest import CHOICES_XML, local_task


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_serve_with_two_workers_shares_one_model_dir(tmp_path, docroot, tiny_clip_spec):
    port = _free_port()
    model_dir = tmp_path / "state"
    env = dict(os.environ, LOCAL_FILES_DOCUMENT_ROOT=str(docroot), LABELLOOP_RETRAIN_DEBOUNCE="0",
               LABELLOOP_WARM_CACHE="false", LOG_LEVEL="WARNING")
    env.pop("LABEL_STUDIO_URL", None)
    env.pop("LABEL_STUDIO_API_KEY", None)
    cmd = [sys.executable, "-m", "labelloop.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "2", "--model-dir", str(model_dir), "--embedder", tiny_clip_spec]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "backend did not come up"
                time.sleep(0.2)
            version = client.post("/setup", json={"project": "1.1", "schema": CHOICES_XML}).json()["model_version"]
            task = local_task(1, "imgs/red0.png")
            event = {"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": CHOICES_XML}, "task": task,
                     "annotation": {"id": 1, "task": 1, "result": [
                         {"from_name": "label", "to_name": "image", "type": "choices",
                          "value": {"choices": ["green"]}}]}}
            assert client.post("/webhook", json=event).status_code == 201
            deadline = time.monotonic() + 120
            while client.post("/setup", json={"project": "1.1", "schema": CHOICES_XML}).json()["model_version"] \
                    == version:
                assert time.monotonic() < deadline, client.get("/metrics").json()
                time.sleep(0.2)
            # whichever worker answers, it serves the new version (uvicorn spreads requests over both)
            seen = {}
            for _ in range(12):
                metrics = client.get("/metrics").json()
                seen[metrics["worker_pid"]] = metrics["projects"]["1"]["model_version"]
                result = client.post("/predict", json={"tasks": [task], "project": "1.1"}).json()["results"][0]
                assert result["model_version"] == seen[metrics["worker_pid"]]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert (model_dir / "labelloop.sqlite3").exists()  # --model-dir reached the spawned workers
    assert len(set(seen.values())) == 1 and not next(iter(seen.values())).endswith("-r0")
