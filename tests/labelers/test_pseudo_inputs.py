"""Sources and bad input of `labelloop pseudo-label`: open vocabulary on a folder, a Label Studio export as
the image list, a mask-less image, answers that never parse, a bad base file refused before labeling,
and names mapped onto a label set in `merge` (unmapped counted)."""
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from labelers.pseudo.proposals import FelzenszwalbProposer
from labelers.pseudo.run import list_folder, read_records, run_pseudo_labels, write_records
from labelers.pseudo.settings import load_pseudo_settings
from labelloop.cli import app


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(1)
    for i in range(3):
        array = np.full((64, 64, 3), 30, dtype=np.uint8)
        x, y = rng.integers(0, 30, 2)
        array[y:y + 30, x:x + 30] = rng.integers(100, 255, 3)
        Image.fromarray(array).save(root / f"scene{i}.png")
    return root


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "c.yaml"
    path.write_text("filters:\n  min_box_area: 0\nquestions:\n  min_object_prob: 0.0\n  open_max_new_tokens: 3\n")
    return path


@pytest.fixture(scope="module")
def vlm(tiny_vlm_dirs):
    from labelers.vlm.loading import load_vlm
    from labelers.vlm.settings import load_settings

    return load_vlm(str(tiny_vlm_dirs["qwen2-vl"]), load_settings(), device="cpu")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_folder_without_labels_is_open_vocabulary(scenes, config, tiny_vlm_dirs, tmp_path, one_torch_thread):
    result = invoke("pseudo-label", scenes, "--proposer", "felzenszwalb", "--model", tiny_vlm_dirs["qwen2-vl"],
                    "--config", config, "--device", "cpu", "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "categories: open vocabulary" in result.output
    records = read_records(tmp_path / "out" / "records-0-all.jsonl")
    unnamed = sum(len(r.get("unnamed", [])) for r in records)
    assert f"{unnamed} regions unnamed" in result.output
    assert sum(len(r["boxes"]) for r in records) + unnamed > 0                # every region asked is accounted for
    assert all(len(u["answers"]) == 3 for r in records for u in r.get("unnamed", []))   # 1 ask + 2 re-asks


def test_label_studio_export_as_the_image_list(scenes, config, tiny_vlm_dirs, tmp_path, one_torch_thread):
    export = tmp_path / "export.json"
    export.write_text(json.dumps([
        {"id": 9, "data": {"image": "/data/local-files/?d=scenes/scene1.png"}},
        {"id": 5, "data": {"image": "/data/upload/3/1a2b3c-scene0.png"}},
        {"id": 12, "data": {"image": "/data/upload/3/ffff-gone.png"}}]))
    with pytest.warns(UserWarning, match="gone.png"):
        result = invoke("pseudo-label", export, "--images-root", scenes, "--labels", "dog,cat", "--proposer",
                        "felzenszwalb", "--model", tiny_vlm_dirs["qwen2-vl"], "--config", config, "--device", "cpu",
                        "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    records = read_records(tmp_path / "out" / "records-0-all.jsonl")
    assert [r["image_id"] for r in records] == [5, 9, 12]
    assert records[0]["file"] == "/data/upload/3/1a2b3c-scene0.png" and records[0]["boxes"]
    assert records[2]["error"] and "1 unreadable" in result.output
    tasks = json.loads((tmp_path / "out" / "ls_tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == ["/data/upload/3/1a2b3c-scene0.png",
                                                   "/data/local-files/?d=scenes/scene1.png"]


class NothingHere(FelzenszwalbProposer):
    """Finds no region in the second image of every batch."""

    def propose(self, images):
        found = super().propose(images)
        return [regions if i != 1 else [] for i, regions in enumerate(found)]


def test_a_mask_less_image_is_named_and_the_rest_proceeds(scenes, vlm, tmp_path, one_torch_thread):
    settings = load_pseudo_settings(overrides={"filters": {"min_box_area": 0}, "questions": {"min_object_prob": 0.0}})
    items = list_folder(scenes)
    with pytest.warns(UserWarning, match=r"image 2 \(scene1.png\): no region proposals"):
        summary = run_pseudo_labels(items, NothingHere(), vlm, ["dog"], settings, tmp_path / "r.jsonl",
                                    batch_size=3, progress=False)
    records = read_records(tmp_path / "r.jsonl")
    assert summary["no_regions"] == 1 and records[1]["boxes"] == [] and records[1]["note"] == "no region proposals"
    assert records[0]["boxes"] and records[2]["boxes"]
    big = load_pseudo_settings(overrides={"questions": {"min_object_prob": 0.0}})     # CoT-PL's 10 000 px^2 cut
    with pytest.warns(UserWarning, match=r"image 1 \(scene0.png\): no region left after the filters"):
        run_pseudo_labels(items[:1], FelzenszwalbProposer(), vlm, ["dog"], big, tmp_path / "s.jsonl", progress=False)


def test_answers_that_never_parse_are_kept_with_the_image_named(scenes, vlm, tmp_path, monkeypatch, one_torch_thread):
    import labelers.vlm.generation as generation

    def rambling(vlm, images, prompts, max_new_tokens, batch_size, first_ids):
        return ["I cannot tell what it is"] * len(images), [None] * len(images)
    monkeypatch.setattr(generation, "generate_answers", rambling)
    settings = load_pseudo_settings(overrides={"filters": {"min_box_area": 0}, "questions": {"min_object_prob": 0.0}})
    with pytest.warns(UserWarning, match=r"image 1 \(scene0.png\): \d+ regions got no category name"):
        summary = run_pseudo_labels(list_folder(scenes)[:1], FelzenszwalbProposer(), vlm, None, settings,
                                    tmp_path / "r.jsonl", progress=False)
    record = read_records(tmp_path / "r.jsonl")[0]
    assert record["boxes"] == [] and summary["unnamed"] == len(record["unnamed"]) > 0
    assert record["unnamed"][0]["answers"] == ["I cannot tell what it is"] * 3


def test_bad_base_is_refused_before_any_labeling(scenes, tmp_path):
    base = json.loads(open("/work/shared/data/tiny-coco/small_coco/instances_train2017_small.json").read())
    base["images"].append(dict(base["images"][0]))
    (tmp_path / "base.json").write_text(json.dumps(base))
    result = invoke("pseudo-label", scenes, "--labels", "dog", "--proposer", "felzenszwalb", "--model",
                    tmp_path / "no-such-model", "--base", tmp_path / "base.json", "--output-dir", tmp_path / "out")
    assert result.exit_code == 2 and f"duplicate images ids [{base['images'][0]['id']}]" in result.output
    assert not (tmp_path / "out").exists()


def test_merge_maps_open_names_onto_labels_and_counts_the_rest(tmp_path):
    def box(bbox, name, score):
        return {"bbox": bbox, "category": name, "foreground": True, "score": score}
    records = [{"image_id": 1, "file": "a.jpg", "width": 100, "height": 100, "error": None,
                "boxes": [box([0, 0, 40, 40], "puppy", 0.9), box([1, 1, 40, 40], "dog", 0.5),
                          box([60, 60, 20, 20], "lamp", 0.7)]}]
    write_records(records, tmp_path / "shard" / "records-0-all.jsonl")
    result = invoke("pseudo-label", "merge", tmp_path / "shard", "--output-dir", tmp_path / "m", "--map-to",
                    "dog,cat", "--cross-nms", "0.5")
    assert result.exit_code == 0, result.output
    assert "1 boxes with 1 unmapped names ('lamp' 1) left out" in result.output
    report = json.loads((tmp_path / "m" / "name_mapping.json").read_text())
    assert report["unmapped"] == {"lamp": 1} and report["matched"] == {"synonym": 1, "exact": 1}
    coco = json.loads((tmp_path / "m" / "instances.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat"]
    assert [(a["category_id"], a["score"]) for a in coco["annotations"]] == [(1, 0.9)]   # one object, one label
    kept = read_records(tmp_path / "m" / "records.jsonl")[0]
    assert [b["category"] for b in kept["unmapped"]] == ["lamp"]                    # on disk, not lost


def test_merge_text_encoder_maps_through_open_clip_and_refuses_one_without_text(tiny_clip_spec, tmp_path):
    records = [{"image_id": 1, "file": "a.jpg", "width": 100, "height": 100, "error": None,
                "boxes": [{"bbox": [0, 0, 40, 40], "category": "sports car", "foreground": True, "score": 0.9}]}]
    write_records(records, tmp_path / "shard" / "records-0-all.jsonl")
    result = invoke("pseudo-label", "merge", tmp_path / "shard", "--output-dir", tmp_path / "m", "--map-to",
                    "dog,cat", "--text-encoder", tiny_clip_spec, "--min-similarity", "-1")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m" / "name_mapping.json").read_text())["matched"] == {"embedding": 1}
    result = invoke("pseudo-label", "merge", tmp_path / "shard", "--output-dir", tmp_path / "m2", "--map-to",
                    "dog,cat", "--text-encoder", "efficientnet-lite0")
    assert result.exit_code == 2 and "has no text tower" in result.output


def test_label_studio_export_with_repeated_task_ids_is_refused(tmp_path):
    from labelers.pseudo.run import PseudoRunError, list_label_studio

    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"id": 4, "data": {"image": "a.png"}}, {"id": 4, "data": {"image": "b.png"}}]))
    with pytest.raises(PseudoRunError, match=r"task ids \[4\] repeat"):
        list_label_studio(export)
