import json
import os
import subprocess
import sys
from pathlib import Path

from labelers.head import ClassifierHead
from tests.backend.conftest import setup_project
from tests.backend.test_webhook_training import TASKS, annotate_all


STARTED_BACKEND_BLAS = """
import json, sys
from threadpoolctl import threadpool_info
from backend.config import load_settings
from backend.runtime import Runtime

def blas_threads():
    return sorted({lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"})

before = blas_threads()
runtime = Runtime(load_settings(env={}, model_dir=sys.argv[1], embedder=sys.argv[2]))
runtime.start(preload=False)
started = blas_threads()
runtime.close()
print(json.dumps({"before": before, "started": started, "closed": blas_threads()}))
"""


def test_a_started_backend_runs_numpy_blas_on_one_thread(tmp_path, tiny_clip_spec):
    # Requests are served concurrently (8 Label Studio clients at once); a multi-threaded BLAS in every one of
    # them spun its threads against each other and made /predict's p99 seconds (benchmarks/bench_speed.py).
    # threadpoolctl's limits are process-wide, so this runs in a process of its own: in the test session
    # another test's lingering fit could restore its stale limits at any moment.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", STARTED_BACKEND_BLAS, str(tmp_path / "model_dir"), tiny_clip_spec],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).parents[2], timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    threads = json.loads(out.stdout.strip().splitlines()[-1])
    assert threads["before"] == [2], "the check needs a BLAS that starts on 2 threads"
    assert threads["started"] == [1]
    assert threads["closed"] == [2]


def test_a_retrain_starts_from_the_served_head(make_client, docroot, monkeypatch):
    starts = []
    fit = ClassifierHead.fit

    def recording_fit(self, features, labels, warm_start=None):
        starts.append(None if warm_start is None else warm_start.n_trained)
        return fit(self, features, labels, warm_start=warm_start)

    monkeypatch.setattr(ClassifierHead, "fit", recording_fit)
    with make_client(local_files_document_root=docroot, retrain="manual") as (client, runtime):
        setup_project(client)
        annotate_all(client, tasks=TASKS[:len(TASKS) // 2])
        runtime.trainer.train("1")
        first = list(starts)
        annotate_all(client)
        runtime.trainer.train("1")
        second = starts[len(first):]
    # (the accuracy estimate's k-fold fits come after each publish, from the prior: only the first fit counts)
    assert first[0] is None  # r0 is the untrained prior: nothing to start from
    assert second[0] == len(TASKS) // 2  # r2 starts from r1, trained on the first half


def test_a_predict_reads_the_project_and_parses_its_config_once(make_client, docroot, monkeypatch):
    # Each property of a request's model (target, boxes, strategy, predictor, ...) read the project from
    # SQLite and parsed its label config again: ~6 reads and 4 parses per /predict, a fifth of its CPU.
    import label_studio_sdk.label_interface as sdk

    from backend.store import Store
    from tests.backend.conftest import CHOICES_XML, local_task

    xml = CHOICES_XML.replace("<View>", "<View><!-- parsed once -->")  # a text no other test has parsed
    parses, reads = [], []
    interface = sdk.LabelInterface
    monkeypatch.setattr(sdk, "LabelInterface", lambda text, *a, **k: parses.append(text) or interface(text, *a, **k))
    get_project = Store.get_project
    monkeypatch.setattr(Store, "get_project", lambda self, pid: reads.append(pid) or get_project(self, pid))
    with make_client(local_files_document_root=docroot) as (client, runtime):
        setup_project(client, xml=xml)
        tasks = [local_task(1, "imgs/red0.png"), local_task(2, "imgs/green0.png")]
        first = client.post("/predict", json={"tasks": tasks, "project": "1.1700000000"})
        reads.clear()
        again = client.post("/predict", json={"tasks": tasks, "project": "1.1700000000"})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and len(again.json()["results"]) == 2
    assert parses == [xml]  # /setup parsed it; neither /predict did again
    assert len(reads) <= 3  # the model once, its connect, the served version: not once per property


def test_a_refused_label_config_is_refused_every_time(make_client):
    # The parsed configs are remembered per text; a config that cannot be parsed must not be.
    with make_client() as (client, runtime):
        broken = '<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
        answers = [client.post("/setup", json={"project": "1.1", "schema": broken}) for _ in range(2)]
    assert [a.status_code for a in answers] == [422, 422]
    assert answers[0].json() == answers[1].json()
    assert "not valid XML" in answers[1].json()["detail"]


def test_the_cold_start_pool_lists_an_image_shared_by_two_tasks_once(tmp_path):
    from backend.store import Store

    store = Store(tmp_path / "state")
    store.remember_tasks("1", [(1, "/a.png"), (2, "/a-copy.png"), (3, "/b.png"), (4, "/c.png")])
    store.set_content_keys("1", {1: "key-a", 2: "key-a", 3: "key-b"})  # task 4 not embedded
    store.remember_tasks("2", [(1, "/a.png")])
    store.set_content_keys("2", {1: "key-z"})
    assert sorted(store.project_content_keys("1")) == ["key-a", "key-b"]
    store.close()


SERVED_APP_GC = """
import gc, json, sys
from fastapi.testclient import TestClient
from backend.app import create_app
from backend.config import load_settings
from backend.runtime import Runtime

settings = load_settings(env={}, model_dir=sys.argv[1], embedder=sys.argv[2])
handed = create_app(runtime=Runtime(settings), preload=False)  # an app embedded in a test: never freezes
with TestClient(handed):
    handed_frozen = gc.get_freeze_count()
with TestClient(create_app(settings, preload=False)):  # the process's own server
    served_frozen = gc.get_freeze_count()
print(json.dumps({"handed": handed_frozen, "served": served_frozen, "objects": len(gc.get_objects())}))
"""


def test_a_served_app_freezes_its_long_lived_objects_for_the_garbage_collector(tmp_path, tiny_clip_spec):
    # A full collection walks every object of the process (~750k once torch and the embedder are in: ~0.5 s
    # holding the GIL inside some /predict); frozen objects are skipped. gc state is process-wide: own process.
    out = subprocess.run([sys.executable, "-c", SERVED_APP_GC, str(tmp_path / "model_dir"), tiny_clip_spec],
                         capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["handed"] == 0
    assert counts["served"] > 100_000  # torch, NumPy, FastAPI: most of what lives
    assert counts["objects"] < counts["served"]  # what the collector still walks
