"""`labelloop serve` as a real process on loopback for the load, fault and multi-worker tests.

The server runs through tests/e2e/faulty_serve.py, so a test can arm a training fault by writing the fault file
(see that module). Every wait is bounded; the process group is stopped on exit, and the server's log goes to a
file (a pipe nobody reads would block the server once full).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from tests.backend.conftest import CHOICES_XML, choice_result, local_task
from tests.e2e.faulty_serve import FAULT_FILE_ENV

REPO = Path(__file__).resolve().parents[2]
START_SECONDS = 180.0  # two workers importing torch on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """`with Served(tmp_path, embedder, docroot, workers=2) as s:` a running backend at `s.url`.

    `s.fault(mode)` arms tests/e2e/faulty_serve.py ("" disarms); `s.log()` is the server's log so far.
    """

    def __init__(self, tmp_path: Path, embedder: str, docroot: Path | None, workers: int = 1,
                 model_dir: Path | None = None, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model_dir = model_dir or tmp_path / "state"
        self.fault_file = tmp_path / "fault"
        self.log_path = tmp_path / f"serve-{self.port}.log"
        self.env = dict(os.environ, LABELLOOP_RETRAIN_DEBOUNCE="0", LABELLOOP_WARM_CACHE="false",
                        LOG_LEVEL="INFO", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
                        **{FAULT_FILE_ENV: str(self.fault_file)})
        for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_API_KEY_FILE"):
            self.env.pop(name, None)
        if docroot is not None:
            self.env["LOCAL_FILES_DOCUMENT_ROOT"] = str(docroot)
        self.env.update(env or {})
        self.cmd = [sys.executable, "-m", "tests.e2e.faulty_serve", "serve", "--host", "127.0.0.1", "--port",
                    str(self.port), "--workers", str(workers), "--model-dir", str(self.model_dir),
                    "--embedder", embedder]
        self.proc: subprocess.Popen | None = None

    def fault(self, mode: str) -> None:
        self.fault_file.write_text(mode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "Served":
        self.start()
        return self

    def start(self) -> None:
        """Start the server (again, on the same port and MODEL_DIR) and wait until /health answers."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_SECONDS
        with httpx.Client(timeout=10) as client:
            while True:
                assert self.proc.poll() is None, self.log()[-3000:]
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "backend did not come up:\n" + self.log()[-3000:]
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def __exit__(self, *exc) -> None:
        self.stop()


def fresh_client(url: str, timeout: float = 60.0) -> httpx.Client:
    """Return a client that opens a new connection per request: after a worker is killed, the next request
    reaches a live worker instead of the dead one's reset keep-alive connection (as a reconnecting Label
    Studio would)."""
    return httpx.Client(base_url=url, timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0))


def setup(client: httpx.Client, project: int = 1, xml: str = CHOICES_XML) -> str:
    """POST /setup for `project`; returns the model_version it serves."""
    resp = client.post("/setup", json={"project": f"{project}.1700000000", "schema": xml})
    assert resp.status_code == 200, resp.text
    return resp.json()["model_version"]


def annotate(client: httpx.Client, ann_id: int, task_id: int, image: str, label: str, project: int = 1,
             xml: str = CHOICES_XML) -> httpx.Response:
    """Send Label Studio's ANNOTATION_CREATED webhook for task `task_id` showing `image` labelled `label`."""
    task = local_task(task_id, image, project)
    event = {"action": "ANNOTATION_CREATED", "project": {"id": project, "label_config": xml}, "task": task,
             "annotation": {"id": ann_id, "task": task_id, "project": project, "result": choice_result(label)}}
    return client.post("/webhook", json=event)


def predict(client: httpx.Client, tasks: list[dict[str, Any]], project: int = 1) -> httpx.Response:
    return client.post("/predict", json={"tasks": tasks, "project": f"{project}.1700000000"})


def project_metrics(client: httpx.Client, project: int = 1) -> dict[str, Any]:
    return client.get("/metrics").json()["projects"][str(project)]


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 120.0, every: float = 0.1,
             log: Callable[[], str] | None = None):
    """Return condition()'s first truthy value; fails naming `what` (with the server log) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (
            "\n" + log()[-3000:] if log else "")
        time.sleep(every)
