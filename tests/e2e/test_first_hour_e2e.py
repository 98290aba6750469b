"""End to end, the annotator's first hour against a real Label Studio 1.23, following the README's five steps:
Label Studio started as the README says (the module's fixture), the backend started, 200 CIFAR-10 images
imported in CLASS ORDER with `labelloop import` (task ids follow the classes, as with most folders), the model
connected, Retrieve Predictions, and the Data Manager sorted by ascending score.

Asserted: the first 20 tasks by ascending score span at least 8 of the 10 classes (the cold-start order; ID
order would give one class); labelling those 20 in one burst of submits (webhooks plus Label Studio's own
"train on submit" START_TRAINING) gives one new version; Start Training with nothing new gives none; the
project's version in Label Studio follows without a refused update; the version carries its accuracy and the
count it rests on.

The embedder is EfficientNet-Lite0 at 64 px, as in the other e2e tests. The project is the module's first
(id 1, the k-means seed). Measured in process with the backend's own row order (images sorted by content
key) on these 200 images, the first 20 of the cold-start order cover, for projects 1..30: at 64 px 8-10
classes (mean 9.27, project 1: 10); at 96 px 7-10 (mean 9.2, project 2: 7, project 1: 8). So 8 of 10 is not
met for every seed at every size; at 64 px it was met for all 30 seeds measured.
"""
from __future__ import annotations

import re

import pytest

from backend.heads import PRIOR_PRECHECK
from tests.e2e import ls_steps as steps
from tests.e2e.test_label_studio_e2e import backend_factory  # noqa: F401  (fixture)
from tests.e2e.walkthrough import copy_images, imported_project, labelloop_import

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REFUSED = ("doesn't exist", "did not take model_version")
EMBEDDER = "efficientnet-lite0@64"
PER_CLASS = 20
FIRST_PAGE = 20


@pytest.fixture(scope="module")
def class_sorted_folder(label_studio) -> tuple[str, dict[str, str]]:
    """200 CIFAR-10 training images (20 per class) named <class>_<file>, so a sorted listing is in class
    order; returns (folder, {path under the local-files root: class})."""
    from labelers.sample_data import CIFAR10_CLASSES, cifar10_subset

    paths, labels = cifar10_subset("train", per_class=PER_CLASS)
    folder = label_studio.files_root / "cifar200"
    return str(folder), copy_images(paths, [CIFAR10_CLASSES[i] for i in labels], folder)


def settled(backend, project_id):
    """The project's /metrics entry once no retrain is queued or running, else None."""
    entry = steps.project_metrics(backend, project_id)
    return entry if entry and entry["training"]["state"] == "idle" and entry["training"]["last_run"] else None


def test_readme_steps_on_a_class_sorted_folder(label_studio, class_sorted_folder, backend_factory,  # noqa: F811
                                               capsys):
    # Step 2: the backend. A debounce longer than the gap between two API submits: the burst is one window.
    backend = backend_factory(label_studio, embedder=EMBEDDER, extra_env={"LABELLOOP_RETRAIN_DEBOUNCE": "2"})
    # Step 3: `labelloop import FOLDER --new-project ... --labels ...`.
    folder, truth = class_sorted_folder
    done = labelloop_import(label_studio, folder, "--new-project", "e2e first hour", "--labels",
                            ",".join(steps.CLASSES))
    assert done.returncode == 0, done.stderr
    match = re.search(rf"project (\d+) \(new\): {len(truth)} new tasks, 0 already imported", done.stdout)
    assert match, done.stdout
    ls = label_studio.client()
    project = imported_project(ls, int(match.group(1)), truth)
    assert [t.truth for t in project.tasks] == sorted(truth.values())  # task ids follow the classes
    # Step 4: Connect Model (Label Studio calls /health and /setup; the warm-up embeds every task).
    ml = steps.connect(ls, project, backend)
    v0 = ml["model_version"]
    assert v0.endswith(f"-p{project.id}-r0")
    steps.wait_until(lambda: (steps.project_metrics(backend, project.id)["warm_cache"] or {}).get("state")
                     == "done", "the warm-up of 200 tasks")
    # The label set's ImageNet prior was built in the background after /setup, before any /predict.
    priors = steps.wait_until(lambda: backend.get("/health").json()["embedder"]["imagenet_prior"],
                              "the ImageNet prior of the project's labels")
    assert [p["labels"] for p in priors] == [steps.CLASSES] and "dog" in priors[0]["matched"]
    assert steps.metrics(backend)["counters"].get("predict_requests", 0) == 0

    # Step 5: Retrieve Predictions, order by Prediction score ascending.
    steps.retrieve_predictions(ls, project.id)
    steps.wait_for_ls_project_version(ls, project.id, v0)  # the Data Manager scores only this version
    ascending = steps.list_tasks(ls, project.id, ordering="tasks:predictions_score")
    scores = [t["predictions_score"] for t in ascending]
    assert len(ascending) == len(truth) and None not in scores
    assert scores == sorted(scores) and len(set(scores)) == len(scores)  # the cold-start order: never tied
    # r0 pre-checks a label only where the ImageNet prior gives it PRIOR_PRECHECK or more, with that probability.
    r0 = [p for t in ascending for p in steps.predictions_of(t, v0)]
    regions = [r for p in r0 for r in p["result"]]
    assert len(r0) == len(truth) and all(r["score"] >= PRIOR_PRECHECK for r in regions), regions[:3]
    right = sum(steps.predicted_label(p) == project.task(t["id"]).truth
                for t in ascending for p in steps.predictions_of(t, v0) if p["result"])
    first_page = [project.task(t["id"]) for t in ascending[:FIRST_PAGE]]
    covered = {t.truth for t in first_page}
    with capsys.disabled():
        print(f"\nproject {project.id} ({EMBEDDER}): first {FIRST_PAGE} by ascending score cover "
              f"{len(covered)} of 10 classes: {sorted(covered)}; r0 pre-checks {len(regions)} of {len(r0)} tasks, "
              f"{right} of them right")
    assert len(covered) >= 8, [t.truth for t in first_page]

    # Label the first page in one burst, with Label Studio's "train on submit" toggle on as well.
    ls.projects.update(id=project.id, min_annotations_to_start_training=1)
    for task in first_page:
        steps.annotate(ls, task.id, task.truth)
    steps.wait_for_training(backend, project.id, n_annotations=FIRST_PAGE)
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
    largest = max(sum(t.truth == c for t in first_page) for c in covered)
    assert accuracy["n"] == FIRST_PAGE and accuracy["folds"] == max(2, min(5, largest))  # stratified folds
    assert accuracy["correct"] == round(accuracy["accuracy"] * accuracy["n"])
    assert accuracy["low"] <= accuracy["accuracy"] <= accuracy["high"]
    assert steps.project_metrics(backend, project.id)["accuracy"] == accuracy
    assert details[v0]["accuracy"] is None
    assert f"{accuracy['n']} annotations" in log  # the publish line in the log says it too
    with capsys.disabled():
        print(f"{v1}: accuracy {accuracy['accuracy']:.3f} [{accuracy['low']:.3f}, {accuracy['high']:.3f}] "
              f"on {accuracy['n']} annotations ({accuracy['folds']} folds)")
