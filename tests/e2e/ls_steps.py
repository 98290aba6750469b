"""What the end-to-end tests do in Label Studio (through label-studio-sdk 2.x) and ask of the backend.

Every wait is bounded and polls a real observable (the backend's /metrics, Label Studio's API); nothing
sleeps for a fixed time and no assertion depends on wall-clock speed.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from tests.e2e.label_studio_server import BackendServer

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
WAIT_TIMEOUT = 180.0  # generous: the CI machine is small and shared


def label_config(classes: list[str] = CLASSES) -> str:
    """Return a single-choice image classification config over `classes`."""
    choices = "".join(f'<Choice value="{name}"/>' for name in classes)
    return ('<View><Image name="image" value="$image"/>'
            f'<Choices name="label" toName="image" choice="single">{choices}</Choices></View>')


def choice(label: str) -> list[dict[str, Any]]:
    """Return an annotation result choosing `label`."""
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def as_dict(item: Any) -> dict[str, Any]:
    """Return an SDK object (pydantic) or dict as a plain dict."""
    if isinstance(item, dict):
        return item
    return item.model_dump(mode="json") if hasattr(item, "model_dump") else item.dict()


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT_TIMEOUT, every: float = 0.5) -> Any:
    """Return condition()'s first truthy value; raise AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last value: {last!r})")


@dataclass
class Task:
    id: int
    path: str  # relative to the local-files root
    truth: str


@dataclass
class Project:
    id: int
    tasks: list[Task]
    ml_id: int | None = None

    def task(self, task_id: int) -> Task:
        return next(t for t in self.tasks if t.id == task_id)


def create_project(ls, title: str, files: list[tuple[str, str]]) -> Project:
    """Create a Choices project and import one local-files task per (relative path, truth) pair."""
    project = ls.projects.create(title=title, label_config=label_config())
    ls.projects.import_tasks(id=project.id, request=[{"image": f"/data/local-files/?d={path}"}
                                                      for path, _ in files])
    truth = dict(files)
    tasks = []
    for task in list_tasks(ls, project.id, fields="task_only"):
        path = task["data"]["image"].split("?d=", 1)[1]
        tasks.append(Task(int(task["id"]), path, truth[path]))
    assert len(tasks) == len(files), f"imported {len(tasks)} of {len(files)} tasks"
    return Project(project.id, sorted(tasks, key=lambda t: t.id))


def connect(ls, project: Project, backend: BackendServer, title: str = "labelloop") -> dict[str, Any]:
    """Connect `backend` to `project` (Label Studio calls /health and /setup); returns the ML backend."""
    ml = as_dict(ls.ml.create(url=backend.url, project=project.id, title=title, is_interactive=False))
    project.ml_id = ml["id"]
    return ml


def list_tasks(ls, project_id: int, fields: str = "all", ordering: str | None = None) -> list[dict[str, Any]]:
    """Return every task of the project (with predictions and annotations for fields="all")."""
    query = json.dumps({"ordering": [ordering]}) if ordering else None
    return [as_dict(t) for t in ls.tasks.list(project=project_id, fields=fields, query=query)]


def retrieve_predictions(ls, project_id: int) -> None:
    """The Data Manager action "Retrieve Predictions" over all tasks (synchronous in Label Studio)."""
    ls.actions.create(id="retrieve_tasks_predictions", project=project_id,
                      selected_items={"all": True, "excluded": []})


def predictions_of(task: dict[str, Any], version: str) -> list[dict[str, Any]]:
    """Return the task's predictions made by model `version`."""
    return [as_dict(p) for p in task.get("predictions") or [] if as_dict(p).get("model_version") == version]


def predicted_label(prediction: dict[str, Any]) -> str | None:
    result = prediction.get("result") or []
    return result[0]["value"]["choices"][0] if result else None


def annotate(ls, task_id: int, label: str) -> int:
    """Submit an annotation choosing `label` (Label Studio posts ANNOTATION_CREATED); returns its id."""
    return as_dict(ls.annotations.create(id=task_id, result=choice(label)))["id"]


# -- the backend's side ----------------------------------------------------------------------------------------
def metrics(backend: BackendServer) -> dict[str, Any]:
    response = backend.get("/metrics")
    assert response.status_code == 200, response.text
    return response.json()


def project_metrics(backend: BackendServer, project_id: int) -> dict[str, Any] | None:
    return metrics(backend)["projects"].get(str(project_id))


def served_version(backend: BackendServer, project_id: int) -> str:
    """Return the version /setup reports for the project (what Label Studio stores before predicting)."""
    response = backend.post("/setup", json={"project": f"{project_id}.0", "schema": label_config(),
                                            "hostname": "", "access_token": "", "extra_params": None})
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


def wait_for_training(backend: BackendServer, project_id: int, n_annotations: int,
                      statuses: tuple[str, ...] = ("succeeded",)) -> dict[str, Any]:
    """Wait until the backend is idle for the project and its newest run used `n_annotations` annotations
    (or ended with one of `statuses` other than succeeded); returns the project's /metrics entry."""
    def settled():
        entry = project_metrics(backend, project_id)
        if not entry or entry["training"]["state"] != "idle":
            return None
        last = entry["training"]["last_run"]
        if not last or last["status"] not in statuses:
            return None
        if last["status"] == "succeeded" and last["n_annotations"] != n_annotations:
            return None
        return entry

    return wait_until(settled, f"a training run of project {project_id} on {n_annotations} annotations "
                               f"ending {'/'.join(statuses)}")


def wait_for_ls_project_version(ls, project_id: int, version: str) -> None:
    """Wait until Label Studio's project model_version is `version` (the backend syncs it after training)."""
    wait_until(lambda: ls.projects.get(id=project_id).model_version == version,
               f"Label Studio project {project_id} model_version == {version}", timeout=60.0)
