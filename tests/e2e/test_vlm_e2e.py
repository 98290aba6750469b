"""End to end with real processes: Label Studio 1.23 + `labelloop serve --predictor vlm` over a tiny random
Qwen2-VL saved locally (tests/conftest.py). Proves that Label Studio accepts a config with a
`model_complementary="true"` control, stores the VLM's ordinary and complementary predictions under the VLM's
version, and that annotations still retrain the embedding head without changing what the VLM serves."""
from __future__ import annotations

import pytest

from tests.e2e import ls_steps as steps
from tests.e2e.label_studio_server import start_backend

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROUNDS = 3


def two_controls_config(classes: list[str] = steps.CLASSES) -> str:
    """The recommended config: the ordinary control, then the complementary one marked for the VLM."""
    choices = "".join(f'<Choice value="{name}"/>' for name in classes)
    return ('<View><Image name="image" value="$image"/>'
            f'<Choices name="label" toName="image">{choices}</Choices>'
            f'<Choices name="not_label" toName="image" choice="multiple" model_complementary="true">{choices}'
            '</Choices></View>')


@pytest.fixture
def vlm_backend(label_studio, tiny_vlm_dirs, tmp_path):
    backend = start_backend(label_studio, tmp_path / "model_dir", extra_env={
        "LABELLOOP_PREDICTOR": "vlm", "LABELLOOP_VLM_MODEL": str(tiny_vlm_dirs["qwen2-vl"]),
        "LABELLOOP_VLM_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"})
    yield backend
    backend.stop()


def test_vlm_pre_annotates_both_controls_and_the_head_still_trains(label_studio, cifar_files, vlm_backend):
    ls = label_studio.client()
    xml = two_controls_config()
    created = ls.projects.create(title="e2e vlm pre-annotation", label_config=xml)
    ls.projects.import_tasks(id=created.id, request=[{"image": f"/data/local-files/?d={path}"}
                                                     for path, _ in cifar_files])
    truth = dict(cifar_files)
    project = steps.Project(created.id, [steps.Task(int(t["id"]), t["data"]["image"].split("?d=", 1)[1],
                                                    truth[t["data"]["image"].split("?d=", 1)[1]])
                                         for t in steps.list_tasks(ls, created.id, fields="task_only")])
    ml = steps.connect(ls, project, vlm_backend)
    version = ml["model_version"]
    assert version.startswith("vlm-qwen2-vl-") and version.endswith(f"-p{project.id}")
    assert steps.metrics(vlm_backend)["vlm"]["models"][str(vlm_backend.env["LABELLOOP_VLM_MODEL"])]["loaded"] \
        is False  # connecting (/setup) never loads the VLM

    steps.retrieve_predictions(ls, project.id)
    tasks = steps.list_tasks(ls, project.id)
    assert len(tasks) == len(cifar_files)
    for task in tasks:
        mine = steps.predictions_of(task, version)
        assert len(mine) == 1, f"task {task['id']}: {task.get('predictions')}"
        regions = {region["from_name"]: region for region in mine[0]["result"]}
        assert set(regions) == {"label", "not_label"}, regions
        assert len(regions["label"]["value"]["choices"]) == 1
        assert regions["label"]["value"]["choices"][0] in steps.CLASSES
        negatives = regions["not_label"]["value"]["choices"]
        assert len(negatives) == ROUNDS and len(set(negatives)) == ROUNDS and set(negatives) <= set(steps.CLASSES)
        assert 0.0 <= mine[0]["score"] <= 1.0
    steps.wait_for_ls_project_version(ls, project.id, version)  # score column and sort use the VLM's version

    for task in project.tasks[:4]:
        steps.annotate(ls, task.id, task.truth)
    entry = steps.wait_for_training(vlm_backend, project.id, n_annotations=4)
    assert entry["predictor"] == {"predictor": "vlm", "model_version": version,
                                  "model": vlm_backend.env["LABELLOOP_VLM_MODEL"], "mode": "both", "error": None}
    setup = vlm_backend.post("/setup", json={"project": f"{project.id}.0", "schema": xml, "hostname": "",
                                             "access_token": "", "extra_params": None})
    assert setup.json()["model_version"] == version  # the head trained (r1) but the VLM still pre-annotates
