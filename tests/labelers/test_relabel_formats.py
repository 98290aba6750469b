"""Formats: relabel JSON + class index, ReaL real.json, Label Studio single-choice in / multi-choice out."""
import json

import pytest

from labelers.formats.label_studio import LabelStudioExportError
from labelers.formats.ls_relabel import (read_multichoice_predictions, read_single_choice_export,
                                         write_multichoice_predictions)
from labelers.formats.real_json import read_real_json, write_real_json
from labelers.formats.relabel_json import (ClassIndex, RelabelFormatError, read_class_index, read_relabel_json,
                                           write_class_index, write_relabel_json)


def test_relabel_json_and_class_index_round_trip(tmp_path):
    index = ClassIndex(["n01440764", "n01443537", "n01484850"], ["tench", "goldfish", "great_white_shark"])
    assert read_class_index(write_class_index(tmp_path / "imagenet_class_index.json", index)) == index
    rows = [("val/a.JPEG", [0, 2]), ("val/b.JPEG", [1]), ("val/c.JPEG", [])]
    path = write_relabel_json(tmp_path / "train1.json", rows)
    assert json.loads(path.read_text())["data"][0] == {"img_path": "val/a.JPEG", "labels": [0, 2]}
    assert read_relabel_json(path, len(index)) == rows
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind


def test_an_index_outside_the_class_index_names_the_row(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"data": [{"img_path": "a.jpg", "labels": [1]}, {"img_path": "b.jpg", "labels": [0, 3]}]}))
    with pytest.raises(RelabelFormatError, match=r"row 1 \(b\.jpg\): label 3 is outside the class-index"):
        read_relabel_json(path, n_classes=3)
    path.write_text(json.dumps({"data": [{"img_path": "a.jpg", "labels": "cat"}]}))
    with pytest.raises(RelabelFormatError, match=r"row 0 \(a\.jpg\)"):
        read_relabel_json(path)


def test_real_json_round_trip_in_sorted_filename_order(tmp_path):
    labels = {"ILSVRC2012_val_00000002.JPEG": [], "ILSVRC2012_val_00000001.JPEG": [3, 7]}
    path = write_real_json(tmp_path / "real.json", labels)
    assert json.loads(path.read_text()) == [[3, 7], []]  # sorted names; the empty list (unscored) is kept
    assert read_real_json(path, list(labels)) == labels


def test_real_json_length_mismatch_is_refused(tmp_path):
    path = tmp_path / "real.json"
    path.write_text("[[1], [2]]")
    with pytest.raises(RelabelFormatError, match="2 label lists for 3 images"):
        read_real_json(path, ["a", "b", "c"])
    with pytest.raises(RelabelFormatError, match=r"row 1 \(b\): index outside"):
        read_real_json(path, ["a", "b"], n_classes=2)


def _ls_task(i, choices, control="label"):
    return {"id": i, "data": {"image": f"/data/{i}.jpg"},
            "annotations": [{"was_cancelled": False, "result": [
                {"from_name": control, "to_name": "image", "type": "choices", "value": {"choices": choices}}]}]}


def test_label_studio_single_choice_export_in(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps([_ls_task(1, ["cat"]), _ls_task(2, ["dog"]), {"id": 3, "data": {"image": "x"}}]))
    assert read_single_choice_export(path) == (["/data/1.jpg", "/data/2.jpg"], ["cat", "dog"], "label")
    path.write_text(json.dumps([_ls_task(1, ["cat", "dog"])]))
    with pytest.raises(LabelStudioExportError, match=r"task 1 \(id 1\) has 2 choices"):
        read_single_choice_export(path)
    path.write_text(json.dumps([{"id": 1, "data": {"image": "x"}, "annotations": []}]))
    with pytest.raises(LabelStudioExportError, match="no task has a single-choice"):
        read_single_choice_export(path)


def test_label_studio_multichoice_predictions_round_trip(tmp_path):
    images, sets = ["/data/1.jpg", "/data/2.jpg"], [["cat", "dog"], ["car"]]
    scores = [{"cat": 0.97, "dog": 0.61, "car": 0.01}, {"car": 0.88}]
    path = write_multichoice_predictions(tmp_path / "predictions.json", images, sets, scores)
    task = json.loads(path.read_text())[0]
    (result,) = task["predictions"][0]["result"]  # one Choices result per task
    assert result["value"] == {"choices": ["cat", "dog"]} and result["score"] == 0.61
    assert read_multichoice_predictions(path) == [("/data/1.jpg", ["cat", "dog"], {"cat": 0.97, "dog": 0.61}),
                                                  ("/data/2.jpg", ["car"], {"car": 0.88})]
    with pytest.raises(ValueError, match=r"task 0 \(a\): no score for dog"):
        write_multichoice_predictions(tmp_path / "bad.json", ["a"], [["dog"]], [{}])
