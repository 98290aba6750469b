"""End to end with real processes: Label Studio 1.23 + `labelloop serve` on a `<Choices choice="multiple">`
project asking for relabel suggestions (extra_params "relabel"). Scenes are 2x2 canvases of real CIFAR-10
images. Proves that Label Studio stores ONE multi-choice result per task with our version and per-label
scores, and that an annotation keeping part of a suggestion is counted in /metrics."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.e2e import ls_steps as steps
from tests.e2e.label_studio_server import start_backend

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CLASSES = ["airplane", "cat", "ship", "truck"]
RELABEL = {"relabel": {"regions": "grid", "grid_rows": 2, "threshold": 0.2}}


def multi_config() -> str:
    choices = "".join(f'<Choice value="{name}"/>' for name in CLASSES)
    return ('<View><Image name="image" value="$image"/>'
            f'<Choices name="tags" toName="image" choice="multiple">{choices}</Choices></View>')


@pytest.fixture(scope="module")
def scene_files(label_studio) -> list[tuple[str, list[str]]]:
    """Six 64 px scenes of two or three real CIFAR-10 objects under Label Studio's files root; returns
    (relative path, classes in the scene) pairs."""
    from labelers.sample_data import CIFAR10_CLASSES, cifar10_subset

    paths, labels = cifar10_subset("test", per_class=3)
    by_class = {name: [p for p, y in zip(paths, labels) if CIFAR10_CLASSES[y] == name] for name in CLASSES}
    folder = label_studio.files_root / "scenes"
    folder.mkdir(parents=True, exist_ok=True)
    layouts = [["cat", "ship"], ["airplane", "truck"], ["ship", "truck", "cat"], ["airplane", "cat"],
               ["truck", "ship"], ["cat", "airplane", "ship"]]
    files = []
    for k, names in enumerate(layouts):
        canvas = Image.new("RGB", (64, 64), (128, 128, 128))
        for j, name in enumerate(names):
            tile = Image.open(by_class[name][k % 3]).convert("RGB")
            canvas.paste(tile, ((j % 2) * 32, (j // 2) * 32))
        buf = io.BytesIO()
        canvas.save(buf, format="PNG")
        (folder / f"scene{k}.png").write_bytes(buf.getvalue())
        files.append((f"scenes/scene{k}.png", names))
    return files


@pytest.fixture
def clip_backend(label_studio, tiny_clip_spec, tmp_path):
    # A CLIP embedder (a tiny random one: no weights can be downloaded) answers zero-shot before any
    # annotation, so version r0 already suggests labels; retraining is manual so the version stays put.
    backend = start_backend(label_studio, tmp_path / "model_dir", embedder=tiny_clip_spec,
                            extra_env={"LABELLOOP_RETRAIN": "manual"})
    yield backend
    backend.stop()


def test_relabel_suggestions_are_stored_by_label_studio_and_their_acceptance_counted(label_studio, scene_files,
                                                                                      clip_backend):
    ls = label_studio.client()
    created = ls.projects.create(title="e2e relabel suggestions", label_config=multi_config())
    ls.projects.import_tasks(id=created.id, request=[{"image": f"/data/local-files/?d={path}"}
                                                     for path, _ in scene_files])
    ml = steps.as_dict(ls.ml.create(url=clip_backend.url, project=created.id, title="labelloop",
                                    is_interactive=False, extra_params=RELABEL))
    version = ml["model_version"]
    assert f"-p{created.id}-r0-relabel-" in version  # /setup got the extra_params and named the settings

    steps.retrieve_predictions(ls, created.id)
    tasks = steps.list_tasks(ls, created.id)
    assert len(tasks) == len(scene_files)
    suggested = {}
    for task in tasks:
        mine = steps.predictions_of(task, version)
        assert len(mine) == 1, f"task {task['id']}: {task.get('predictions')}"
        assert 0.0 <= mine[0]["score"] <= 1.0
        if not mine[0]["result"]:
            continue
        (region,) = mine[0]["result"]  # ONE multi-choice result per task
        labels = region["value"]["choices"]
        assert region["from_name"] == "tags" and region["type"] == "choices" and set(labels) <= set(CLASSES)
        assert set(region["meta"]["scores"]) == set(labels)  # a score per suggested label, kept by Label Studio
        assert all(0.2 <= s <= 1.0 for s in region["meta"]["scores"].values())
        suggested[task["id"]] = labels
    assert suggested, "no task got a suggestion"

    # The annotator keeps the first suggested label, unticks the others and adds one that was not suggested.
    task_id, labels = next(iter(suggested.items()))
    added = [c for c in CLASSES if c not in labels][:1]
    ls.annotations.create(id=task_id, result=[{"from_name": "tags", "to_name": "image", "type": "choices",
                                               "value": {"choices": labels[:1] + added}}])
    expected = {"kind": "choices", "annotations": 1, "kept": 1, "removed": len(labels) - 1, "added": len(added),
                "kept_share": round(1 / len(labels), 4)}
    steps.wait_until(lambda: (steps.project_metrics(clip_backend, created.id) or {}).get("suggestions") == expected,
                     f"/metrics counting the annotation of task {task_id} as {expected}", timeout=60.0)
