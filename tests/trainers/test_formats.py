"""Every label format: round trips through LabelSet, and clear errors naming the key, row or file."""
import json
import pickle

import numpy as np
import pytest

from labelers.formats.auto_labels import read_auto_labels
from labelers.formats.label_studio import (LabelStudioExportError, read_label_studio_export,
                                           resolve_image_path, write_label_studio_tasks)
from trainers.formats.classification_csv import (ClassificationCsvError, read_classification_csv,
                                                 write_classification_csv)
from trainers.formats.image_folder import ImageFolderError, read_image_folder, write_image_folder_tree
from trainers.formats.libcll_pickle import LibcllPickleError, read_libcll_pickle, write_libcll_pickle
from trainers.formats.vlm_run import VlmRunError, read_vlm_run
from trainers.labelset import LabelSet, LabelSetError, majority_vote, pad_rows

from .conftest import DIGITS


def make_set(images, labels, cl=None):
    n = len(labels)
    cl = cl if cl is not None else (labels[:, None] + np.array([[1, 2, 3]])) % 10
    return LabelSet(DIGITS, [f"img{i:03d}.png" for i in range(n)], cl, labels, images=images)


def test_libcll_round_trip(tmp_path, mnist_small):
    images, labels = mnist_small
    original = make_set(images, labels)
    path = write_libcll_pickle(tmp_path / "set.pkl", original, images)
    back = read_libcll_pickle(path)
    assert back.names == original.names and back.class_names == DIGITS
    assert np.array_equal(back.cl_labels, original.cl_labels)
    assert np.array_equal(back.ord_labels, labels)
    assert np.array_equal(back.images, images)


def test_libcll_missing_key_is_named(tmp_path):
    path = tmp_path / "bad.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"names": ["a"], "images": np.zeros((1, 4, 4, 3), np.uint8), "ord_labels": [0]}, fh)
    with pytest.raises(LibcllPickleError, match="missing key 'cl_labels'"):
        read_libcll_pickle(path)


def test_libcll_length_mismatch_and_code_objects_are_refused(tmp_path):
    path = tmp_path / "short.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"names": ["a", "b"], "images": np.zeros((2, 4, 4, 3), np.uint8), "ord_labels": [0],
                     "cl_labels": [[1], [0]]}, fh)
    with pytest.raises(LibcllPickleError, match="'ord_labels' has 1 rows but 'names' has 2"):
        read_libcll_pickle(path)
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as fh:
        pickle.dump({"names": ["a"], "images": print}, fh)
    with pytest.raises(LibcllPickleError, match="refusing"):
        read_libcll_pickle(evil)


def test_libcll_reads_legacy_clcifar_keys(tmp_path):
    path = tmp_path / "legacy.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"filenames": ["x", "y"], "data": np.zeros((2, 3072), np.uint8), "ord_labels": [1, 2],
                     "com_labels": [[0, 3, 3], [1, 0, 2]]}, fh)
    back = read_libcll_pickle(path, class_names=DIGITS[:4])
    assert back.images.shape == (2, 32, 32, 3) and back.cl_labels.tolist() == [[0, 3, 3], [1, 0, 2]]


def test_classification_csv_round_trip_and_unknown_class(tmp_path, digit_folder):
    folder = read_image_folder(digit_folder)
    path = write_classification_csv(tmp_path / "labels.csv", folder)
    back = read_classification_csv(path, DIGITS)
    assert np.array_equal(back.ord_labels, folder.ord_labels)
    assert [p.resolve() for p in back.paths] == [p.resolve() for p in folder.paths]
    path.write_text("path,label\na.png,3\nb.png,eleven\n")
    with pytest.raises(ClassificationCsvError, match="line 3 .*'eleven'"):
        read_classification_csv(path, DIGITS)


def test_classification_csv_refuses_cl_only_labels(tmp_path, mnist_small):
    images, labels = mnist_small
    cl_only = make_set(images, np.full(len(labels), -1))
    with pytest.raises(ClassificationCsvError, match="complementary"):
        write_classification_csv(tmp_path / "x.csv", cl_only)


def test_image_folder_round_trip_from_arrays_and_files(tmp_path, digit_folder, mnist_small):
    images, labels = mnist_small
    root = write_image_folder_tree(tmp_path / "tree", make_set(images, labels))
    back = read_image_folder(root)
    assert back.class_names == DIGITS and sorted(back.ord_labels.tolist()) == sorted(labels.tolist())
    copied = write_image_folder_tree(tmp_path / "copy", read_image_folder(digit_folder), link=True)
    assert len(read_image_folder(copied)) == 60
    with pytest.raises(ImageFolderError, match="no class subfolders"):
        read_image_folder(tmp_path / "tree" / "3")


def test_label_studio_reader_skips_cancelled_and_collects_controls(tmp_path):
    export = [
        {"id": 1, "data": {"image": "/data/local-files/?d=digits/3/00001.png"},
         "annotations": [
             {"was_cancelled": False, "result": [
                 {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["3"]}},
                 {"from_name": "not_label", "to_name": "image", "type": "choices", "value": {"choices": ["7", "1"]}}]},
             {"was_cancelled": True, "result": [
                 {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["8"]}}]},
             {"was_cancelled": False, "result": [
                 {"from_name": "not_label", "to_name": "image", "type": "choices", "value": {"choices": ["1", "2"]}}]}]},
        {"id": 2, "data": {"image": "/data/upload/4/a1b2c3-five.png"}, "annotations": []},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    tasks = read_label_studio_export(path)
    assert tasks[0].labels == {"label": ["3"], "not_label": ["7", "1", "2"]}
    assert tasks[1].labels == {} and tasks[1].image.endswith("five.png")
    again = read_label_studio_export(write_label_studio_tasks(tmp_path / "import.json", tasks))
    assert [t.labels for t in again] == [t.labels for t in tasks]
    assert [t.image for t in again] == [t.image for t in tasks]


def test_label_studio_bad_inputs_name_the_task(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps([{"id": 9, "data": {"a": "1.png", "b": "2.png"}}]))
    with pytest.raises(LabelStudioExportError, match="task 1 .*id 9"):
        read_label_studio_export(path)
    path.write_text(json.dumps({"not": "tasks"}))
    with pytest.raises(LabelStudioExportError, match="list of tasks"):
        read_label_studio_export(path)


def test_resolve_image_path_local_files_and_uploads(tmp_path):
    (tmp_path / "digits" / "3").mkdir(parents=True)
    target = tmp_path / "digits" / "3" / "00001.png"
    target.write_bytes(b"x")
    (tmp_path / "five.png").write_bytes(b"y")
    assert resolve_image_path("/data/local-files/?d=digits/3/00001.png", [tmp_path]) == target
    assert resolve_image_path("/data/local-files/?d=mnt/data/digits/3/00001.png", [tmp_path]) == target
    assert resolve_image_path("/data/upload/4/a1b2c3-five.png", [tmp_path]) == tmp_path / "five.png"
    assert resolve_image_path("/data/upload/4/zz-nothing.png", [tmp_path]) is None


def _write_run(tmp_path, mode, records, classes=("cat", "dog", "frog")):
    run = tmp_path / "run"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"mode": mode, "class_names": list(classes), "long_label": True}))
    (run / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_vlm_run_complementary_and_ordinary(tmp_path):
    records = [{"image": "a.png", "path": "/x/a.png", "round": r, "label": lab, "true_label": 0}
               for r, lab in enumerate([1, None, 2])]
    records += [{"image": "b.png", "path": "/x/b.png", "round": r, "label": lab, "true_label": None}
                for r, lab in enumerate([0, 0, 2])]
    cl_run = read_vlm_run(_write_run(tmp_path, "complementary", records))
    assert cl_run.names == ["a.png", "b.png"]
    assert cl_run.cl_labels.tolist() == [[1, -1, 2], [0, 0, 2]]
    assert cl_run.ord_labels.tolist() == [0, -1]
    ordinary = read_vlm_run(_write_run(tmp_path / "o", "ordinary", records))
    assert ordinary.ord_labels.tolist() == [1, 0] and not ordinary.has_cls


def test_vlm_run_label_outside_classes(tmp_path):
    run = _write_run(tmp_path, "complementary", [{"image": "a", "round": 0, "label": 7}])
    with pytest.raises(VlmRunError, match="line 1 .*label 7"):
        read_vlm_run(run)


def test_labelset_checks_and_helpers():
    with pytest.raises(LabelSetError, match="row 1 .*b"):
        LabelSet(["x", "y"], ["a", "b"], [[0], [5]], [0, 1])
    assert pad_rows([[1], [2, 3], []]).tolist() == [[1, -1], [2, 3], [-1, -1]]
    assert majority_vote(np.array([[2, 1, 1], [3, 4, -1], [-1, -1, -1]])).tolist() == [1, 3, -1]


def test_auto_labels_written_by_export_is_read_by_the_shared_reader(tmp_path, mnist_small):
    from trainers.export import export

    images, labels = mnist_small
    out = export(make_set(images, labels), tmp_path / "auto_labels.csv", long_label=True)
    rows = read_auto_labels(out)
    assert len(rows) == 60 and rows[0] == ("img000.png", [DIGITS[(labels[0] + k) % 10] for k in (1, 2, 3)])
