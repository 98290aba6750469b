"""End to end: suspect labels reviewed in a real Label Studio (docs/backend.md, "Reviewing suspect labels").

A project of real CIFAR-10 images from three classes, annotated with a few deliberately wrong labels. After
the retrain the backend has created the Data Manager view "Suspect labels (labelloop)", whose filter (read back
through label-studio-sdk) selects exactly the suspect tasks /metrics lists, and each of them carries a
"<version>-audit" prediction with the suggested label.
"""
from __future__ import annotations

import shutil

import pytest

from backend.suspects import AUDIT_SUFFIX, VIEW_TITLE
from tests.e2e import ls_steps as steps
from tests.e2e.label_studio_server import start_backend

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CLASSES = ("airplane", "frog", "truck")  # far apart in any image embedding
PER_CLASS = 12
WRONG = 3  # one wrong annotation per class


@pytest.fixture(scope="module")
def three_class_files(label_studio) -> list[tuple[str, str]]:
    """PER_CLASS CIFAR-10 test images of each of CLASSES under Label Studio's local-files root."""
    from labelers.sample_data import CIFAR10_CLASSES, cifar10_subset

    paths, labels = cifar10_subset("test", per_class=PER_CLASS)
    folder = label_studio.files_root / "cifar10-suspects"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for path, label in zip(paths, labels):
        name = CIFAR10_CLASSES[label]
        if name in CLASSES:
            shutil.copyfile(path, folder / f"{name}_{path.name}")
            files.append((f"cifar10-suspects/{name}_{path.name}", name))
    return files


def test_wrong_annotations_show_up_in_a_suspects_view_with_suggestions(label_studio, three_class_files, tmp_path):
    backend = start_backend(label_studio, tmp_path / "model_dir")
    try:
        ls = label_studio.client()
        project = steps.create_project(ls, "suspects", three_class_files)
        steps.connect(ls, project, backend)
        wrong = {}
        for cls in CLASSES:  # the first task of each class gets the next class's label
            first = next(t for t in project.tasks if t.truth == cls)
            wrong[first.id] = CLASSES[(CLASSES.index(cls) + 1) % len(CLASSES)]
        for task in project.tasks:
            steps.annotate(ls, task.id, wrong.get(task.id, task.truth))
        entry = steps.wait_for_training(backend, project.id, n_annotations=len(project.tasks))
        suspects = entry["suspects"]
        version = entry["model_version"]
        assert suspects["state"] == "judged" and suspects["judged"] == len(project.tasks), suspects
        flagged = set(suspects["tasks"])
        assert flagged & set(wrong), f"no injected wrong label among the suspects {flagged} (wrong: {wrong})"
        assert len(flagged & set(wrong)) / len(flagged) > WRONG / len(project.tasks)  # better than chance

        views = [v for v in ls.views.list(project=project.id) if (v.data or {}).get("title") == VIEW_TITLE]
        assert len(views) == 1, [v.data for v in ls.views.list(project=project.id)]
        in_view = {int(steps.as_dict(t)["id"]) for t in ls.tasks.list(project=project.id, view=views[0].id,
                                                                         fields="task_only")}
        assert in_view == flagged

        tasks = {t["id"]: t for t in steps.list_tasks(ls, project.id)}
        stored = {item["task"]: item for item in suspects["items"]}
        for task_id in flagged:
            mine = steps.predictions_of(tasks[task_id], f"{version}{AUDIT_SUFFIX}")
            assert len(mine) == 1, tasks[task_id].get("predictions")
            assert steps.predicted_label(mine[0]) == stored[task_id]["suggested"][0]
            assert mine[0]["score"] == pytest.approx(stored[task_id]["score"])
        for task_id, label in wrong.items():
            if task_id in flagged:  # a caught wrong label is not suggested back (at 64 px an airplane may be a truck)
                assert stored[task_id]["suggested"] != [label] and stored[task_id]["given"] == [label]

        # correcting one wrong label publishes a new version; its audit updates the same view in place
        fixed = next(iter(wrong))
        steps.annotate(ls, fixed, project.task(fixed).truth)
        after = steps.wait_until(lambda: _newer_audit(backend, project.id, version), "an audited newer version")
        views = [v for v in ls.views.list(project=project.id) if (v.data or {}).get("title") == VIEW_TITLE]
        assert len(views) == 1 and views[0].id == suspects["label_studio"]["view"]
        in_view = {int(steps.as_dict(t)["id"]) for t in ls.tasks.list(project=project.id, view=views[0].id,
                                                                         fields="task_only")}
        assert in_view == set(after["tasks"])
    finally:
        backend.stop()


def _newer_audit(backend, project_id: int, version: str):
    """Return the served version's suspects once a version other than `version` is served and audited."""
    entry = steps.project_metrics(backend, project_id)
    if entry["model_version"] == version or entry["training"]["state"] != "idle":
        return None
    return entry["suspects"] if entry["suspects"] and entry["suspects"]["state"] == "judged" else None
