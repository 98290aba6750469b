"""Outputs: CoT-PL raw JSON, COCO instances with score (validated by pycocotools), Label Studio
RectangleLabels predictions, and the merge with tiny-coco's base instances file."""
import contextlib
import io
import json
from pathlib import Path

import pytest

from labelers.pseudo.coco import CocoError, coco_results, merge_into_base, records_to_coco
from labelers.pseudo.label_studio import record_to_prediction, records_to_tasks
from labelers.pseudo.raw import records_to_raw

TINY_COCO = Path("/work/shared/data/tiny-coco/small_coco/instances_train2017_small.json")


def box(bbox, category, foreground=True, score=0.5):
    return {"bbox": bbox, "category": category, "foreground": foreground, "score": score, "p_object": 0.9,
            "p_category": score / 0.9, "p_foreground": 0.7 if foreground else 0.3, "proposal_score": 0.9}


RECORDS = [
    {"image_id": 139, "file": "a.jpg", "width": 200, "height": 100, "error": None,
     "boxes": [box([10, 20, 50, 40], "dog", score=0.6), box([0, 0, 200, 50], "sky", foreground=False),
               box([100, 10, 80, 80], "lamp", score=0.3)]},
    {"image_id": 285, "file": "b.jpg", "width": 100, "height": 100, "error": None,
     "boxes": [box([5, 5, 20, 30], "dog", score=0.8)]},
    {"image_id": 632, "file": "c.jpg", "width": 0, "height": 0, "error": "cannot read c.jpg", "boxes": []},
]


def quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def test_raw_format_is_cotpl_shaped():
    raw = records_to_raw(RECORDS)
    assert set(raw) == {"139", "285"}
    assert raw["139"]["foreground"] == {"bbox": [[10, 20, 50, 40], [100, 10, 80, 80]], "category": ["dog", "lamp"]}
    assert raw["139"]["background"] == {"bbox": [[0, 0, 200, 50]], "category": ["sky"]}


def test_coco_output_loads_in_pycocotools_and_results_load(tmp_path):
    from pycocotools.coco import COCO

    instances = records_to_coco(RECORDS)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(instances))
    coco = quiet(COCO, str(path))
    assert len(coco.getAnnIds()) == 3                        # foreground only
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["dog", "lamp"]
    dog = coco.getCatIds(catNms=["dog"])
    assert sorted(a["score"] for a in coco.loadAnns(coco.getAnnIds(catIds=dog))) == [0.6, 0.8]
    results = quiet(coco.loadRes, coco_results(instances))
    assert len(results.getAnnIds()) == 3 and results.loadAnns(1)[0]["area"] == 50 * 40


def test_coco_with_given_category_order_keeps_it():
    instances = records_to_coco(RECORDS, categories=["lamp", "cat", "dog"])
    assert [(c["id"], c["name"]) for c in instances["categories"]] == [(1, "lamp"), (2, "cat"), (3, "dog")]
    assert {a["category_id"] for a in instances["annotations"]} == {1, 3}


def test_label_studio_prediction_in_percent_with_scores():
    prediction = record_to_prediction(RECORDS[0], model_version="v1")
    first = prediction["result"][0]
    assert first["type"] == "rectanglelabels" and first["score"] == 0.6
    assert first["value"] == {"x": 5.0, "y": 20.0, "width": 25.0, "height": 40.0, "rotation": 0,
                              "rectanglelabels": ["dog"]}
    assert (first["original_width"], first["original_height"]) == (200, 100)
    assert prediction["score"] == pytest.approx((0.6 + 0.3) / 2) and prediction["model_version"] == "v1"
    tasks = records_to_tasks(RECORDS, image_url_prefix="/data/local-files/?d=")
    assert [t["data"]["image"] for t in tasks] == ["/data/local-files/?d=a.jpg", "/data/local-files/?d=b.jpg"]


def tiny_coco_pseudo(base):
    """Pseudo records on two real tiny-coco images: one known name (dog), two new ones."""
    images = base["images"][:2]
    return [{"image_id": im["id"], "file": im["file_name"], "width": im["width"], "height": im["height"],
             "error": None, "boxes": [box([1, 2, 30, 40], "dog"), box([5, 5, 10, 10], "lamp"),
                                      box([0, 0, 8, 8], "stick")]} for im in images]


def test_merge_with_tiny_coco_keeps_base_and_adds_pseudo_categories(tmp_path):
    from pycocotools.coco import COCO

    base = json.loads(TINY_COCO.read_text())
    merged = merge_into_base(base, records_to_coco(tiny_coco_pseudo(base)))
    max_base_cat = max(c["id"] for c in base["categories"])            # 90 in COCO
    new = {c["name"]: c for c in merged["categories"] if c["id"] > max_base_cat}
    assert sorted(new) == ["lamp", "stick"] and {c["supercategory"] for c in new.values()} == {"pseudo"}
    assert sorted(c["id"] for c in new.values()) == [max_base_cat + 1, max_base_cat + 2]
    assert merged["annotations"][:len(base["annotations"])] == base["annotations"]   # base kept as is
    assert len(merged["annotations"]) == len(base["annotations"]) + 6
    ids = [a["id"] for a in merged["annotations"]]
    assert len(set(ids)) == len(ids)
    dog_id = next(c["id"] for c in base["categories"] if c["name"] == "dog")
    added = merged["annotations"][len(base["annotations"]):]
    assert sum(a["category_id"] == dog_id for a in added) == 2         # existing name keeps its id
    assert len(merged["images"]) == len(base["images"])                # same images, no duplicates
    path = tmp_path / "merged.json"
    path.write_text(json.dumps(merged))
    assert len(quiet(COCO, str(path)).getAnnIds()) == len(merged["annotations"])


def test_merge_refuses_a_base_with_duplicate_ids():
    base = json.loads(TINY_COCO.read_text())
    base["annotations"].append(dict(base["annotations"][0]))
    with pytest.raises(CocoError, match=rf"duplicate annotations ids \[{base['annotations'][0]['id']}\]"):
        merge_into_base(base, records_to_coco(tiny_coco_pseudo(base)))


def test_merge_refuses_an_annotation_with_a_missing_category():
    base = json.loads(TINY_COCO.read_text())
    base["categories"] = [c for c in base["categories"] if c["id"] != base["annotations"][0]["category_id"]]
    with pytest.raises(CocoError, match="names category"):
        merge_into_base(base, records_to_coco(tiny_coco_pseudo(base)))


def test_merge_adds_no_category_that_has_no_pseudo_boxes():
    base = json.loads(TINY_COCO.read_text())
    pseudo = records_to_coco(RECORDS, categories=["dog", "lamp", "stick"])   # "stick": no box (cut, excluded)
    merged = merge_into_base(base, pseudo)
    assert [c["name"] for c in merged["categories"] if c["supercategory"] == "pseudo"] == ["lamp"]
