"""Post-processing options on hand-made records: exclusions, frequency cut, cross-category NMS, class weights."""
import json

import pytest

from labelers.pseudo.postprocess import (box_iou, category_counts, class_weights, cross_category_nms,
                                         exclude_categories, frequency_cut, write_class_weights)


def rec(*boxes):
    return [{"image_id": 1, "file": "a.jpg", "width": 100, "height": 100, "error": None,
             "boxes": [{"bbox": list(b), "category": c, "foreground": True, "score": s} for c, b, s in boxes]}]


def test_exclusion_by_name_and_whole_word_keyword_unlike_cotpl_substring():
    records = rec(("dog", (0, 0, 5, 5), 0.5), ("woman", (0, 0, 5, 5), 0.5), ("old man", (0, 0, 5, 5), 0.5))
    words = exclude_categories(records, names=["dog"], keywords=["man"])
    assert [b["foreground"] for b in words[0]["boxes"]] == [False, True, False]
    cotpl = exclude_categories(records, keywords=["man"], substring=True)
    assert [b["foreground"] for b in cotpl[0]["boxes"]] == [True, False, False]
    assert all(b["foreground"] for b in records[0]["boxes"])      # input untouched


def test_frequency_cut_is_a_count():
    records = rec(("dog", (0, 0, 5, 5), 0.1), ("dog", (9, 9, 5, 5), 0.1), ("cat", (0, 0, 5, 5), 0.99))
    cut, kept = frequency_cut(records, 2)
    assert kept == ["dog"] and category_counts(cut) == {"dog": 2}


def test_box_iou_hand_computed():
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_cross_category_nms_gives_one_label_per_object():
    records = rec(("dog", (0, 0, 10, 10), 0.6), ("puppy", (0, 0, 10, 9), 0.8), ("cat", (50, 50, 10, 10), 0.3))
    out = cross_category_nms(records, 0.7)
    assert [b["category"] for b in out[0]["boxes"]] == ["puppy", "cat"]


def test_class_weights_vector_and_file(tmp_path):
    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "tie"},
            {"id": 91, "name": "lamp"}]
    weights = class_weights(cats, base_classes=["person"], pseudo_classes=["dog", "lamp"])
    assert weights == [1.0, 1.0, 0.0, 1.0, 0.7]
    write_class_weights(tmp_path / "w.json", weights, [c["name"] for c in cats])
    data = json.loads((tmp_path / "w.json").read_text())
    assert data["names"][-1] == "background" and data["weights"] == weights
