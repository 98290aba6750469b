"""End to end with real processes: Label Studio 1.23 + `labelloop serve` on a `<RectangleLabels>` project.
Tasks are real COCO photos (tiny-coco). Proves that Label Studio stores our box pre-annotations (percent
coordinates, a score per box, our version), that the classical proposer standing in for SAM is said in
/health, and that an annotation keeping one box and drawing another is counted in /metrics."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e import ls_steps as steps
from tests.e2e.label_studio_server import start_backend

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TINY_COCO = Path("/work/shared/data/tiny-coco/small_coco/train_2017_small")
LABELS = ["person", "dog", "car"]
BOXES = {"boxes": {"max_side": 128, "max_boxes": 5}}


def boxes_config() -> str:
    labels = "".join(f'<Label value="{name}"/>' for name in LABELS)
    return ('<View><Image name="image" value="$image"/>'
            f'<RectangleLabels name="box" toName="image">{labels}</RectangleLabels></View>')


@pytest.fixture(scope="module")
def photo_files(label_studio) -> list[str]:
    """Four real COCO photos under Label Studio's files root; returns their relative paths."""
    folder = label_studio.files_root / "coco"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for path in sorted(TINY_COCO.glob("*.jpg"))[:4]:
        shutil.copyfile(path, folder / path.name)
        files.append(f"coco/{path.name}")
    return files


@pytest.fixture
def clip_backend(label_studio, tiny_clip_spec, tmp_path):
    # CLIP (a tiny random one here) labels box crops zero-shot; no SAM weights exist, so the classical
    # proposer stands in and /health says so.
    backend = start_backend(label_studio, tmp_path / "model_dir", embedder=tiny_clip_spec)
    yield backend
    backend.stop()


def test_box_pre_annotations_are_stored_by_label_studio_and_their_acceptance_counted(label_studio, photo_files,
                                                                                     clip_backend):
    ls = label_studio.client()
    created = ls.projects.create(title="e2e box pre-annotations", label_config=boxes_config())
    ls.projects.import_tasks(id=created.id, request=[{"image": f"/data/local-files/?d={p}"} for p in photo_files])
    ml = steps.as_dict(ls.ml.create(url=clip_backend.url, project=created.id, title="labelloop",
                                    is_interactive=False, extra_params=BOXES))
    version = ml["model_version"]
    assert f"-p{created.id}-r0-boxes-" in version

    steps.retrieve_predictions(ls, created.id)
    tasks = steps.list_tasks(ls, created.id)
    assert len(tasks) == len(photo_files)
    with_boxes = []
    for task in tasks:
        mine = steps.predictions_of(task, version)
        assert len(mine) == 1, f"task {task['id']}: {task.get('predictions')}"
        result = mine[0]["result"]
        assert 1 <= len(result) <= 5
        for box in result:
            value = box["value"]
            assert box["type"] == "rectanglelabels" and box["from_name"] == "box" and box["to_name"] == "image"
            assert value["rectanglelabels"][0] in LABELS and len(value["rectanglelabels"]) == 1
            assert 0 <= value["x"] and value["x"] + value["width"] <= 100 + 1e-6
            assert 0 <= value["y"] and value["y"] + value["height"] <= 100 + 1e-6
            assert 0 <= box["score"] <= 1 and box["original_width"] > 0
        assert mine[0]["score"] == pytest.approx(sum(b["score"] for b in result) / len(result), abs=1e-5)
        with_boxes.append((task["id"], result))
    health = clip_backend.get("/health").json()["boxes"]
    assert "facebook/sam-vit-huge" in health["fallback_to_classical"]  # said, not silent

    # The annotator keeps the first box, deletes the others and draws one more.
    task_id, result = with_boxes[0]
    first = {k: result[0][k] for k in ("from_name", "to_name", "type", "value", "original_width",
                                       "original_height")}
    drawn = {"from_name": "box", "to_name": "image", "type": "rectanglelabels",
             "original_width": first["original_width"], "original_height": first["original_height"],
             "value": {"x": 95.0, "y": 95.0, "width": 4.0, "height": 4.0, "rotation": 0,
                       "rectanglelabels": ["car"]}}
    ls.annotations.create(id=task_id, result=[first, drawn])
    expected = {"kind": "boxes", "annotations": 1, "kept": 1, "removed": len(result) - 1, "added": 1,
                "kept_share": round(1 / len(result), 4)}
    steps.wait_until(lambda: (steps.project_metrics(clip_backend, created.id) or {}).get("suggestions") == expected,
                     f"/metrics counting the annotation of task {task_id} as {expected}", timeout=60.0)
    entry = steps.project_metrics(clip_backend, created.id)
    assert entry["training"]["runs"] == {}  # a box project is not retrained
