"""Inputs for `labelloop label`: ImageFolder, flat folder, CSV, Label Studio export; errors name the place."""
import json

import pytest
from PIL import Image

from labelers.vlm.inputs import InputError, read_inputs


@pytest.fixture()
def tree(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8)).save(tmp_path / "tree" / cls / f"{i}.png")
    (tmp_path / "tree" / "notes.txt").write_text("not an image")
    return tmp_path / "tree"


def test_image_folder_gives_classes_and_truth(tree):
    items, names = read_inputs(tree)
    assert names == ["cat", "dog"]
    assert [(i.key, i.label) for i in items] == [("cat/0.png", "cat"), ("cat/1.png", "cat"),
                                                 ("dog/0.png", "dog"), ("dog/1.png", "dog")]


def test_flat_folder_needs_classes(tree):
    with pytest.raises(InputError, match="--classes"):
        read_inputs(tree / "cat")
    items, names = read_inputs(tree / "cat", ["cat", "dog"])
    assert [i.label for i in items] == [None, None] and names == ["cat", "dog"]


def test_csv_paths_are_relative_to_the_file_and_errors_name_the_line(tree):
    csv_path = tree / "list.csv"
    csv_path.write_text("image,label\ncat/0.png,cat\ndog/1.png,dog\n")
    items, names = read_inputs(csv_path)
    assert items[1].path == tree / "dog/1.png" and names == ["cat", "dog"]
    csv_path.write_text("image,label\ncat/0.png,cat\ncat/0.png,cat\n")
    with pytest.raises(InputError, match="line 3.*listed twice"):
        read_inputs(csv_path)
    csv_path.write_text("picture\ncat/0.png\n")
    with pytest.raises(InputError, match="image column"):
        read_inputs(csv_path)
    csv_path.write_text("image,label\ncat/0.png,lion\n")
    with pytest.raises(InputError, match="'lion'"):
        read_inputs(csv_path, ["cat", "dog"])


def test_label_studio_export(tree, tmp_path, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", raising=False)
    result = lambda name: [{"from_name": "label", "to_name": "image", "value": {"choices": [name]}}]
    tasks = [{"id": 1, "data": {"image": "/data/local-files/?d=cat/0.png"},
              "annotations": [{"was_cancelled": True, "result": result("dog")}, {"result": result("cat")}]},
             {"id": 2, "data": {"image": "/data/local-files/?d=dog/1.png"}, "annotations": []}]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    items, names = read_inputs(export, local_files_root=tree)
    assert [(i.key, i.path, i.label) for i in items] == [("cat/0.png", tree / "cat/0.png", "cat"),
                                                         ("dog/1.png", tree / "dog/1.png", None)]
    assert names == ["cat"]
    with pytest.raises(InputError, match="task 1.*not found.*--image-root"):
        read_inputs(export)
    export.write_text(json.dumps([{"id": 7, "data": {"image": "https://example.com/a.jpg"}}]))
    with pytest.raises(InputError, match="task 7.*remote"):
        read_inputs(export, ["cat"])
    export.write_text("{not json")
    with pytest.raises(InputError, match="export.json: not valid JSON"):
        read_inputs(export)


def test_missing_source_and_unknown_type(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_inputs(tmp_path / "none")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(InputError, match="expected an image folder"):
        read_inputs(tmp_path / "x.txt")
