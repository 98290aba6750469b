"""Inputs of `labelloop relabel`: the seed's YAML keys, CSV and relabeler JSON refusals naming the row."""
import json
from pathlib import Path

import pytest

from labelers.relabel.inputs import RelabelInputError, read_input, read_seed_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_seeds_three_configs_map_onto_our_settings():
    naive = read_seed_config(CONFIGS / "relabel_naive.yaml")
    assert naive == {"label": "argmax", "keep_original": True, "rounds": 1, "data": Path("train0.json"),
                     "regions": "random", "num_crops": 3, "crop_size": "fixed", "confidence": "naive",
                     "dropout_rate": 0.0, "aggregation": "mean", "threshold": 0.6, "max_images": 100,
                     "save_path": Path("train1_naive.json")}
    dropout = read_seed_config(CONFIGS / "relabel_mc_dropout.yaml")
    assert (dropout["confidence"], dropout["num_crops"], dropout["threshold"], dropout["dropout_rate"]) == \
        ("mc-dropout", 10, 0.5, 0.05)
    perturbation = read_seed_config(CONFIGS / "relabel_mc_perturbation.yaml")
    assert (perturbation["confidence"], perturbation["threshold"], perturbation["passes"]) == ("mc-perturbation", 0.3, 25)


def test_seed_config_bad_values_and_unknown_keys(tmp_path, caplog):
    path = tmp_path / "c.yaml"
    path.write_text("post_proc_logits: softmax\n")
    with pytest.raises(RelabelInputError, match="post_proc_logits 'softmax'"):
        read_seed_config(path)
    path.write_text("crop_method: rpn\nlearning_rate: 0.1\n")
    assert read_seed_config(path)["regions"] == "felzenszwalb"
    assert "rpn" in caplog.text and "'learning_rate' is not used" in caplog.text


def test_relabeler_json_rows_need_one_original_label(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    path = tmp_path / "train0.json"
    path.write_text(json.dumps({"data": [{"img_path": "a.png", "labels": [0]}, {"img_path": "a.png", "labels": []}]}))
    with pytest.raises(RelabelInputError, match=r"row 1 \(a\.png\): an empty list of labels"):
        read_input(path)
    path.write_text(json.dumps({"data": [{"img_path": "missing.png", "labels": [0]}]}))
    with pytest.raises(RelabelInputError, match=r"row 0: image 'missing.png' not found"):
        read_input(path)


def test_csv_with_an_unknown_class_names_the_row(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    path = tmp_path / "labels.csv"
    path.write_text("image,label\na.png,cat\nb.png,cow\n")
    with pytest.raises(RelabelInputError, match=r"row 1: label 'cow' is not a known class"):
        read_input(path, tmp_path / "classes.txt")
    loaded = read_input(path)  # without a class file the classes are the names seen, sorted
    assert loaded.class_names == ["cat", "cow"] and loaded.original.tolist() == [0, 1]


def test_holdout_rows_empty_lists_left_out_and_originals_checked(tmp_path, caplog):
    from labelers.formats.relabel_json import RelabelFormatError
    from labelers.relabel.inputs import read_holdout

    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"")
    path = tmp_path / "held.json"
    rows = [{"img_path": "a.png", "labels": [0, 1], "original": 1}, {"img_path": "b.png", "labels": [], "original": 0},
            {"img_path": "c.png", "labels": [1], "original": 0}]
    path.write_text(json.dumps({"data": rows}))
    paths, truth, originals = read_holdout(path, 2)
    assert [p.name for p in paths] == ["a.png", "c.png"] and truth == [[0, 1], [1]] and originals.tolist() == [1, 0]
    assert "1 holdout rows have an empty label list" in caplog.text and "row 1 (b.png)" in caplog.text
    rows[2]["original"] = 5
    path.write_text(json.dumps({"data": rows}))
    with pytest.raises(RelabelFormatError, match=r"row 2: original 5 is outside the class-index file"):
        read_holdout(path, 2)
    del rows[2]["original"]
    path.write_text(json.dumps({"data": rows}))
    with pytest.raises(RelabelFormatError, match=r"row 2: 'original' must be a class index on every row"):
        read_holdout(path, 2)
    path.write_text(json.dumps({"data": [{"img_path": "a.png", "labels": []}]}))
    with pytest.raises(RelabelInputError, match="every holdout row has an empty label list"):
        read_holdout(path, 2)


def test_a_label_studio_export_without_a_choices_control_names_what_the_task_holds(tmp_path):
    from labelers.formats.label_studio import LabelStudioExportError

    path = tmp_path / "export.json"
    path.write_text(json.dumps([{"id": 7, "data": {"image": "/d/1.jpg"}, "annotations": [{"result": [
        {"from_name": "box", "to_name": "image", "type": "rectanglelabels",
         "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": ["cat"]}}]}]}]))
    with pytest.raises(LabelStudioExportError, match=r"task 1 \(id 7\) holds rectanglelabels from 'box'"):
        read_input(path)
