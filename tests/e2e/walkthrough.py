"""The README walkthrough as steps: import a folder with `labelloop import`, connect, label, retrieve.

Shared by tests/e2e/test_browser_e2e.py and scripts/screenshots.py, so the pictures show what the test checks.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e import ls_steps as steps
from tests.e2e.label_studio_server import REPO, BackendServer, LabelStudioServer, _clean_env


def labelloop_import(ls: LabelStudioServer, *args: str, api_key: str | None = None) -> subprocess.CompletedProcess:
    """Run the real `labelloop import` CLI against `ls` (URL and key from the env, as in the README)."""
    env = _clean_env()
    env.update({"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": api_key or ls.token})
    return subprocess.run([sys.executable, "-m", "labelloop.cli", "import", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def imported_project(client, project_id: int, truth: dict[str, str]) -> steps.Project:
    """Return the project's tasks with their true classes (`truth`: path under the local-files root -> class)."""
    tasks = []
    for task in steps.list_tasks(client, project_id, fields="task_only"):
        path = task["data"]["image"].split("?d=", 1)[1]
        tasks.append(steps.Task(int(task["id"]), path, truth[path]))
    return steps.Project(project_id, sorted(tasks, key=lambda t: t.id))


def train_on_one_per_class(client, project: steps.Project, backend: BackendServer) -> tuple[str, set[int]]:
    """Connect `backend`, annotate the first task of each class, wait for the retrain, Retrieve Predictions and
    wait until the project's version in Label Studio is the new one; returns (version, annotated task ids)."""
    steps.connect(client, project, backend)
    first_of_class: dict[str, int] = {}
    for task in project.tasks:
        first_of_class.setdefault(task.truth, task.id)
    for truth, task_id in first_of_class.items():
        steps.annotate(client, task_id, truth)
    version = steps.wait_for_training(backend, project.id, n_annotations=len(first_of_class))["model_version"]
    steps.retrieve_predictions(client, project.id)
    steps.wait_for_ls_project_version(client, project.id, version)
    return version, set(first_of_class.values())


def copy_images(paths: list[Path], names: list[str], folder: Path) -> dict[str, str]:
    """Copy images into `folder` as <class>_<file> (class order, as most folders are); returns path -> class."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for path, name in zip(paths, names):
        target = folder / f"{name}_{path.name}"
        shutil.copyfile(path, target)
        truth[f"{folder.name}/{target.name}"] = name
    return truth
