"""End to end, the annotator's first hour against a real Label Studio 1.23: one burst of submits (webhooks plus
Label Studio's own "train on submit" START_TRAINING) gives one new version; Start Training with nothing new
gives none; the project's version follows without a refused update; the version carries its accuracy.
"""
from __future__ import annotations

import pytest

from tests.e2e import ls_steps as steps
from tests.e2e.test_label_studio_e2e import backend_factory, connected_project  # noqa: F401  (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REFUSED = ("doesn't exist", "did not take model_version")


def settled(backend, project_id):
    """The project's /metrics entry once no retrain is queued or running, else None."""
    entry = steps.project_metrics(backend, project_id)
    return entry if entry and entry["training"]["state"] == "idle" and entry["training"]["last_run"] else None


def test_one_version_per_burst_in_step_with_its_accuracy(label_studio, cifar_files, backend_factory):  # noqa: F811
    # A debounce longer than the gap between two API submits: the burst is one window.
    backend = backend_factory(label_studio, extra_env={"LABELLOOP_RETRAIN_DEBOUNCE": "2"})
    ls, project, v0 = connected_project(label_studio, backend, cifar_files, "e2e first hour")
    # Label Studio's "train on submit": START_TRAINING after every submitted annotation.
    ls.projects.update(id=project.id, min_annotations_to_start_training=1)

    labelled = [t for t in project.tasks if sum(u.truth == t.truth for u in project.tasks if u.id <= t.id) <= 2]
    for task in labelled:
        steps.annotate(ls, task.id, task.truth)
    steps.wait_for_training(backend, project.id, n_annotations=len(labelled))
    entry = steps.wait_until(lambda: settled(backend, project.id), "the burst's retrains to settle")
    versions = backend.get(f"/versions?project={project.id}").json()
    assert len(versions["versions"]) == 2, (versions, entry["training"])  # r0 and the burst's one version
    v1 = versions["versions"][-1]
    assert entry["training"]["runs"].get("succeeded") == 1
    assert steps.metrics(backend)["counters"].get("webhook_START_TRAINING", 0) >= 1  # LS's own toggle fired

    # Start Training with no new annotation: a run that finds the same training set, and no new version.
    skipped_before = entry["training"]["runs"].get("skipped", 0)
    ls.ml.train(id=project.ml_id)
    entry = steps.wait_until(lambda: (e := settled(backend, project.id))
                             and e["training"]["runs"].get("skipped", 0) > skipped_before and e,
                             "START_TRAINING with nothing new to be skipped")
    assert "training set unchanged" in entry["training"]["last_run"]["note"]
    assert backend.get(f"/versions?project={project.id}").json()["versions"] == versions["versions"]

    # Retrieve Predictions stores predictions of v1; then Label Studio takes v1 as the project's version.
    steps.retrieve_predictions(ls, project.id)
    steps.wait_for_ls_project_version(ls, project.id, v1)
    log = (backend.model_dir.parent / "logs" / "backend-0.log").read_text()
    refused = [line for line in log.splitlines() if any(text in line for text in REFUSED)]
    assert refused == []

    # The version carries its estimated accuracy, with the count it rests on, in /versions and /metrics.
    details = {d["model_version"]: d for d in versions["details"]}
    accuracy = details[v1]["accuracy"]
    assert accuracy["n"] == len(labelled) and accuracy["folds"] == 2  # 2 per class: 2 stratified folds
    assert accuracy["correct"] == round(accuracy["accuracy"] * accuracy["n"])
    assert accuracy["low"] <= accuracy["accuracy"] <= accuracy["high"]
    assert steps.project_metrics(backend, project.id)["accuracy"] == accuracy
    assert details[v0]["accuracy"] is None
    assert f"{accuracy['n']} annotations" in log  # the publish line in the log says it too
