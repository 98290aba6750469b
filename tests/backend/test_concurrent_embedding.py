"""The cache warm-up and a /predict over the same tasks at the same time: each image goes through the model once.

Both fetch the images they need, then embed under the embedder's compute lock, and the embedding step looks the
content keys up in the cache after taking that lock, so whichever comes second reuses the first one's vectors.
"""
from __future__ import annotations

import threading
import time

from backend.runtime import Runtime
from tests.backend.conftest import png, setup_project, shared_loader
from tests.backend.fakes import LEGACY_TOKEN, FakeLabelStudio, ServerThread
from tests.backend.test_webhook_training import TASKS, predict


class CountingEmbedder:
    """The real embedder, counting the images that go through its forward pass."""

    def __init__(self, inner):
        self.inner = inner
        self.encoded = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_batch(self, batch):
        self.encoded += len(batch)
        return self.inner.encode_batch(batch)


class WatchedLock:
    """A lock that tells how many threads are waiting for it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._guard = threading.Lock()
        self.waiting = 0

    def acquire(self):
        with self._guard:
            self.waiting += 1
        self._lock.acquire()
        with self._guard:
            self.waiting -= 1

    def release(self):
        self._lock.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_warm_up_and_predict_on_the_same_tasks_embed_each_image_once(make_client, make_settings, docroot,
                                                                    tiny_clip_spec):
    counting = CountingEmbedder(shared_loader(tiny_clip_spec))
    fake = FakeLabelStudio(image=png(), tasks=TASKS)
    with ServerThread(fake.app()) as ls:
        settings = make_settings(local_files_document_root=docroot, label_studio_url=ls.url,
                                 label_studio_api_key=LEGACY_TOKEN, warm_cache=True)
        runtime = Runtime(settings, embedder_loader=lambda spec: counting)
        with make_client(runtime=runtime) as (client, _):
            runtime.embedders.get(tiny_clip_spec)
            gate = runtime.embedders.compute_locks[counting.id] = WatchedLock()
            gate.acquire()  # both callers fetch their images, then queue up for the model
            try:
                setup_project(client)  # starts the warm-up over the project's tasks
                results = []
                predicting = threading.Thread(target=lambda: results.append(predict(client)))
                predicting.start()
                wait_for(lambda: gate.waiting == 2, "the warm-up and /predict to wait for the model together")
            finally:
                gate.release()
            predicting.join(60)
            wait_for(lambda: runtime.warmer.status("1")["state"] != "running", "the warm-up to finish")
            warm = runtime.warmer.status("1")
    assert warm["state"] == "done" and warm["embedded"] == len(TASKS)
    assert len(results) == 1 and all(r["score"] is not None for r in results[0])
    assert counting.encoded == len(TASKS)  # not 2 x len(TASKS)
