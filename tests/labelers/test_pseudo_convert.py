"""`labelloop export` between box formats: records <-> COCO (pycocotools loads it, loadRes accepts it)
<-> Label Studio rectangles <-> CoT-PL raw, round trips keeping boxes, names and scores."""
import contextlib
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labelers.pseudo.convert import BoxFormatError, read_boxes, sniff_box_format, write_boxes
from labelers.pseudo.run import write_records
from labelloop.cli import app

TINY_COCO = Path("/work/shared/data/tiny-coco/small_coco")
RLE = {"size": [100, 200], "counts": "PPYo0"}


def box(bbox, category, foreground=True, score=0.5, **extra):
    return {"bbox": bbox, "category": category, "foreground": foreground, "score": score, **extra}


RECORDS = [
    {"image_id": 139, "file": "a.jpg", "width": 200, "height": 100, "error": None,
     "boxes": [box([10.0, 20.0, 50.0, 40.0], "dog", score=0.6, segmentation=RLE),
               box([100.0, 10.0, 80.0, 80.0], "lamp", score=0.3)]},
    {"image_id": 285, "file": "b.jpg", "width": 100, "height": 100, "error": None,
     "boxes": [box([5.0, 5.0, 20.0, 30.0], "dog", score=0.8)]},
]


def summary(records):
    return [(r["image_id"], [(b["category"], [round(v, 6) for v in b["bbox"]], round(b["score"], 6))
                             for b in r["boxes"]]) for r in records]


def export(*args):
    return CliRunner().invoke(app, ["export", *map(str, args)])


def test_records_to_coco_to_ls_and_back_keeps_boxes_names_scores(tmp_path):
    from pycocotools.coco import COCO

    src = write_records(RECORDS, tmp_path / "records.jsonl")
    assert export(src, tmp_path / "i.json", "--format", "coco").exit_code == 0
    assert sniff_box_format(tmp_path / "i.json") == "coco"
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "i.json"))
        results = coco.loadRes([{k: a[k] for k in ("image_id", "category_id", "bbox", "score")}
                                for a in coco.dataset["annotations"]])
    assert len(results.getAnnIds()) == 3 and coco.loadAnns(1)[0]["segmentation"] == RLE
    result = export(tmp_path / "i.json", tmp_path / "ls.json", "--format", "ls-boxes")
    assert result.exit_code == 0 and "wrote 2 images (3 boxes)" in result.output
    assert sniff_box_format(tmp_path / "ls.json") == "ls-boxes"
    assert export(tmp_path / "ls.json", tmp_path / "back.jsonl").exit_code == 0
    assert summary(read_boxes(tmp_path / "back.jsonl")) == summary(RECORDS)


def test_raw_needs_the_images_and_gets_score_one_with_a_warning(tmp_path):
    write_boxes(RECORDS, tmp_path / "raw.json", "cotpl-raw")
    assert sniff_box_format(tmp_path / "raw.json") == "cotpl-raw"
    result = export(tmp_path / "raw.json", tmp_path / "i.json", "--format", "coco")
    assert result.exit_code == 2 and "--dataset" in result.output
    write_boxes(RECORDS, tmp_path / "sizes.json", "coco")
    with pytest.warns(UserWarning, match="no scores; its 3 boxes get score 1.0"):
        back = read_boxes(tmp_path / "raw.json", images=tmp_path / "sizes.json")
    assert [(r["image_id"], r["width"], [b["bbox"] for b in r["boxes"]]) for r in back] == \
        [(r["image_id"], r["width"], [b["bbox"] for b in r["boxes"]]) for r in RECORDS]
    assert {b["score"] for r in back for b in r["boxes"]} == {1.0}


def test_tiny_coco_ground_truth_to_label_studio_and_back(tmp_path):
    base = json.loads((TINY_COCO / "instances_train2017_small.json").read_text())
    with pytest.warns(UserWarning, match=f"{len(base['annotations'])} annotations have no score"):
        result = export(TINY_COCO / "instances_train2017_small.json", tmp_path / "ls.json", "--format", "ls-boxes")
    assert result.exit_code == 0, result.output
    tasks = json.loads((tmp_path / "ls.json").read_text())
    assert len(tasks) == len(base["images"])
    back = read_boxes(tmp_path / "ls.json")
    by_id = {a["id"]: a for a in base["annotations"]}
    first = sorted((a for a in by_id.values() if a["image_id"] == back[0]["image_id"]), key=lambda a: a["id"])
    got = [v for b in back[0]["boxes"] for v in b["bbox"]]
    assert len(back[0]["boxes"]) == len(first) and got == pytest.approx([v for a in first for v in a["bbox"]], abs=1e-6)


def test_background_boxes_left_out_of_coco_are_counted(tmp_path):
    records = [dict(RECORDS[1], boxes=RECORDS[1]["boxes"] + [box([0, 0, 100, 50], "sky", foreground=False)])]
    with pytest.warns(UserWarning, match="1 background boxes are not written to coco"):
        write_boxes(records, tmp_path / "i.json", "coco")


def test_a_json_target_needs_a_format_and_classification_exports_are_untouched(tmp_path):
    src = write_records(RECORDS, tmp_path / "records.jsonl")
    result = export(src, tmp_path / "out.json")
    assert result.exit_code == 2 and "--format" in result.output
    (tmp_path / "labels.jsonl").write_text(json.dumps({"key": "a.jpg", "label": "dog"}) + "\n")
    assert sniff_box_format(tmp_path / "labels.jsonl") is None
    ls = [{"id": 1, "data": {"image": "a.jpg"}, "annotations": [{"result": [{"type": "choices",
                                                                           "value": {"choices": ["dog"]}}]}]}]
    (tmp_path / "cls.json").write_text(json.dumps(ls))
    assert sniff_box_format(tmp_path / "cls.json") is None


def test_rotated_label_studio_box_is_refused_naming_the_task(tmp_path):
    tasks = [{"id": 7, "data": {"image": "a.jpg"}, "predictions": [{"result": [
        {"type": "rectanglelabels", "original_width": 10, "original_height": 10,
         "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rotation": 30, "rectanglelabels": ["dog"]}}]}]}]
    (tmp_path / "ls.json").write_text(json.dumps(tasks))
    with pytest.raises(BoxFormatError, match="task 1 \\(image 7\\) has a rotated box"):
        read_boxes(tmp_path / "ls.json")
