"""Fixtures for the backend's in-process API tests: images, apps, fake servers (the tiny random CLIP,
`tiny_clip_spec`, and the tiny VLMs come from tests/conftest.py)."""
from __future__ import annotations

import io
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from backend.app import create_app
from backend.config import load_settings
from backend.runtime import Runtime

CHOICES_XML = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
               '<Choice value="red"/><Choice value="green"/><Choice value="blue"/></Choices></View>')
MULTI_XML = ('<View><Image name="image" value="$image"/><Choices name="tags" toName="image" choice="multiple">'
             '<Choice value="red"/><Choice value="green"/><Choice value="blue"/></Choices></View>')
COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


def png(color=(200, 30, 30), size=(32, 32), noise: int = 0, seed: int = 0) -> bytes:
    """Return PNG bytes of a solid-colour image (optionally with a little noise so images differ)."""
    array = np.zeros((size[1], size[0], 3), np.int16) + np.asarray(color, np.int16)
    if noise:
        array += np.random.default_rng(seed).integers(-noise, noise + 1, array.shape, dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


_EMBEDDERS: dict[str, object] = {}
_EMBEDDERS_LOCK = threading.Lock()


def shared_loader(spec: str):
    """Load each embedder once per test session through the real factory (CPU), then share it."""
    from labelers.embedders import make_embedder

    with _EMBEDDERS_LOCK:
        if spec not in _EMBEDDERS:
            _EMBEDDERS[spec] = make_embedder(spec, device="cpu")
        return _EMBEDDERS[spec]


@pytest.fixture
def docroot(tmp_path) -> Path:
    """A LOCAL_FILES_DOCUMENT_ROOT with red/green/blue images (3 each, slightly different) and a broken one."""
    root = tmp_path / "docroot"
    (root / "imgs").mkdir(parents=True)
    for name, color in COLORS.items():
        for i in range(3):
            (root / "imgs" / f"{name}{i}.png").write_bytes(png(color, noise=12, seed=i))
    (root / "imgs" / "broken.png").write_bytes(png()[:40])
    return root


def local_task(task_id: int, rel: str, project: int = 1) -> dict:
    return {"id": task_id, "project": project, "data": {"image": f"/data/local-files/?d={rel}"},
            "annotations": [], "predictions": []}


@pytest.fixture
def make_settings(tmp_path, tiny_clip_spec):
    def build(**overrides):
        values = dict(model_dir=tmp_path / "model_dir", embedder=tiny_clip_spec, retrain_debounce_seconds=0.0,
                      warm_cache=True)
        values.update(overrides)
        return load_settings(env={}, **values)

    return build


@pytest.fixture
def make_client(make_settings):
    """Context manager: `with make_client(**settings) as (client, runtime): ...` runs the app with lifespan."""

    @contextmanager
    def build(runtime: Runtime | None = None, preload: bool = False, raise_server_exceptions: bool = True,
              **overrides):
        runtime = runtime or Runtime(make_settings(**overrides), embedder_loader=shared_loader)
        app = create_app(runtime=runtime, preload=preload)
        with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
            yield client, runtime

    return build


def setup_project(client, project: str = "1.1700000000", xml: str = CHOICES_XML, **extra) -> str:
    body = {"project": project, "schema": xml, "hostname": "http://localhost:8080", "access_token": "x" * 40,
            "extra_params": extra or None}
    resp = client.post("/setup", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()["model_version"]


def choice_result(label: str, from_name: str = "label") -> list[dict]:
    return [{"from_name": from_name, "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def annotation_event(ann_id: int, task: dict, label: str, action: str = "ANNOTATION_CREATED",
                     xml: str = CHOICES_XML, **ann_fields) -> dict:
    annotation = {"id": ann_id, "task": task["id"], "project": task.get("project", 1),
                  "result": choice_result(label), "was_cancelled": False, "ground_truth": False}
    annotation.update(ann_fields)
    return {"action": action, "annotation": annotation, "task": task,
            "project": {"id": task.get("project", 1), "title": "p", "label_config": xml, "token": "secret-ish"}}
