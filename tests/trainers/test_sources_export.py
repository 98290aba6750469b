"""Label files matched to images, `labelloop export` round trips, and bad inputs at the CLI."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from labelers.formats.auto_labels import write_auto_labels
from labelloop.cli import app
from trainers.export import read_any
from trainers.formats.image_folder import read_image_folder
from trainers.formats.libcll_pickle import read_libcll_pickle
from trainers.sources import DataSourceError, load_sources

from .conftest import DIGITS

runner = CliRunner()


def cl_rows(folder, offsets=(1, 2, 3)):
    base = read_image_folder(folder)
    return base, [(name.split("/")[1], [DIGITS[(y + k) % 10] for k in offsets])
                  for name, y in zip(base.names, base.ord_labels)]


def test_auto_labels_attach_by_file_name(tmp_path, digit_folder):
    base, rows = cl_rows(digit_folder)
    rows = rows[::-1][:50]  # another order and a subset: matching is by name
    path = write_auto_labels(tmp_path / "auto_labels.csv", rows)
    train = load_sources(str(digit_folder), str(path), long_label=True).train
    assert len(train) == 50
    assert ((train.cl_labels - train.ord_labels[:, None]) % 10 == np.array([1, 2, 3])).all()


def test_auto_labels_whose_names_match_nothing_are_refused(tmp_path, digit_folder):
    """Same length as the dataset, no name matches: the rows are not taken in dataset order."""
    base, rows = cl_rows(digit_folder)
    renamed = [(f"cifar_style_{i}.png", labels) for i, (_, labels) in enumerate(rows)]
    path = write_auto_labels(tmp_path / "auto_labels.csv", renamed)
    with pytest.raises(DataSourceError, match="never by position"):
        load_sources(str(digit_folder), str(path), long_label=True)


def test_auto_labels_unknown_class_and_missing_image_name_the_row(tmp_path, digit_folder):
    base, rows = cl_rows(digit_folder)
    rows[4] = (rows[4][0], ["3", "eleven", "1"])
    with pytest.raises(DataSourceError, match=r"row 5 .*'eleven'"):
        load_sources(str(digit_folder), str(write_auto_labels(tmp_path / "a.csv", rows)), long_label=True)
    _, rows = cl_rows(digit_folder)
    rows[2] = ("missing.png", rows[2][1])
    with pytest.raises(DataSourceError, match=r"row 3 names image 'missing.png'"):
        load_sources(str(digit_folder), str(write_auto_labels(tmp_path / "b.csv", rows)), long_label=True)


def ls_export(folder, path):
    base = read_image_folder(folder)
    tasks = []
    for i, (name, y) in enumerate(zip(base.names, base.ord_labels)):
        result = [{"from_name": "complementary", "to_name": "image", "type": "choices",
                   "value": {"choices": [DIGITS[(y + 1) % 10], DIGITS[(y + 5) % 10]]}}]
        if i % 2 == 0:  # half the tasks also carry the ordinary label (a gold subset)
            result.append({"from_name": "label", "to_name": "image", "type": "choices",
                           "value": {"choices": [DIGITS[y]]}})
        tasks.append({"id": i + 1, "data": {"image": f"/data/local-files/?d=digits/{name}"},
                      "annotations": [{"was_cancelled": False, "result": result}]})
    path.write_text(json.dumps(tasks))
    return base, path


def test_label_studio_export_to_training_labels(tmp_path, digit_folder):
    base, path = ls_export(digit_folder, tmp_path / "export.json")
    labels = load_sources(None, str(path), classes=DIGITS).train  # images found under the JSON's folder
    assert labels.cl_labels.shape == (60, 2)
    assert ((labels.cl_labels - base.ord_labels[:, None]) % 10 == np.array([1, 5])).all()
    assert (labels.ord_labels[::2] == base.ord_labels[::2]).all() and (labels.ord_labels[1::2] == -1).all()
    assert labels.meta["cl_control"] == "complementary" and labels.meta["label_control"] == "label"


def test_label_studio_document_root_as_data_reads_the_exports_images(tmp_path, digit_folder, monkeypatch, caplog):
    # docs/trainers.md: `--data /srv/ls-files --label-path export.json`. Label Studio serves images from a
    # subfolder of its document root, so the root is no class tree; it was refused as one ("subfolder
    # 'digits' is not one of the classes"), found in the README walkthrough.
    (tmp_path / "exports").mkdir()
    base, path = ls_export(digit_folder, tmp_path / "exports" / "export.json")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    labels = load_sources(str(tmp_path), str(path), classes=DIGITS).train
    assert labels.cl_labels.shape == (60, 2)
    assert ((labels.cl_labels - base.ord_labels[:, None]) % 10 == np.array([1, 5])).all()
    assert "is not a class tree" in caplog.text and "reading the images" in caplog.text
    with pytest.raises(DataSourceError, match="no images found"):  # without a Label Studio export: refused as before
        load_sources(str(tmp_path), str(write_auto_labels(tmp_path / "a.csv", cl_rows(digit_folder)[1])),
                     classes=DIGITS)


def test_a_real_label_studio_export_lists_predictions_by_id_and_exports_from_its_document_root(
        tmp_path, digit_folder, monkeypatch):
    # Label Studio's JSON export writes a task's predictions as ids ("predictions": [2, 68]); `export` crashed
    # on them ('int' object has no attribute 'get') while sniffing for boxes. The walkthrough's seam: the
    # export of a project our backend pre-annotated, converted from another folder with --data the root.
    (tmp_path / "exports").mkdir()
    _, path = ls_export(digit_folder, tmp_path / "exports" / "export.json")
    tasks = json.loads(path.read_text())
    for number, task in enumerate(tasks):
        task["predictions"] = [2 * number, 2 * number + 1]
    path.write_text(json.dumps(tasks))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["export", str(path), "set.pkl", "--classes", ",".join(DIGITS), "--data",
                                 str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert read_libcll_pickle(elsewhere / "set.pkl").images.shape == (60, 28, 28, 3)


def test_export_ls_to_libcll_to_auto_labels_round_trip(tmp_path, digit_folder):
    base, path = ls_export(digit_folder, tmp_path / "export.json")
    result = runner.invoke(app, ["export", str(path), str(tmp_path / "set.pkl"), "--classes", ",".join(DIGITS)])
    assert result.exit_code == 0, result.output
    stored = read_libcll_pickle(tmp_path / "set.pkl")
    assert stored.images.shape == (60, 28, 28, 3) and stored.class_names == DIGITS
    result = runner.invoke(app, ["export", str(tmp_path / "set.pkl"), str(tmp_path / "auto_labels.csv"),
                                 "--long-label"])
    assert result.exit_code == 0, result.output
    back = read_any(tmp_path / "auto_labels.csv", data=str(tmp_path / "set.pkl"), long_label=True)
    assert np.array_equal(back.cl_labels, stored.cl_labels)
    result = runner.invoke(app, ["export", str(tmp_path / "set.pkl"), str(tmp_path / "ls.json")])
    assert result.exit_code == 0, result.output
    again = read_any(tmp_path / "ls.json", data=str(tmp_path / "set.pkl"))
    assert np.array_equal(again.cl_labels, stored.cl_labels) and np.array_equal(again.ord_labels, stored.ord_labels)


def test_export_image_folder_csv_image_folder(tmp_path, digit_folder):
    assert runner.invoke(app, ["export", str(digit_folder), str(tmp_path / "labels.csv")]).exit_code == 0
    result = runner.invoke(app, ["export", str(tmp_path / "labels.csv"), str(tmp_path / "tree"),
                                 "--classes", ",".join(DIGITS)])
    assert result.exit_code == 0, result.output
    original, copy = read_image_folder(digit_folder), read_image_folder(tmp_path / "tree")
    assert original.names == copy.names and np.array_equal(original.ord_labels, copy.ord_labels)


def write_vlm_run(folder, records):
    """Write a complementary VLM run directory (run.json + labels.jsonl) holding `records`; return it."""
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"mode": "complementary", "class_names": DIGITS}))
    (folder / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_export_vlm_run_to_libcll(tmp_path, digit_folder):
    base = read_image_folder(digit_folder)
    run = write_vlm_run(tmp_path / "run", [
        {"image": name, "path": str(path), "round": r, "label": int((y + k) % 10), "true_label": int(y)}
        for name, path, y in zip(base.names, base.paths, base.ord_labels) for r, k in enumerate((2, 4))])
    result = runner.invoke(app, ["export", str(run), str(tmp_path / "vlm.pkl")])
    assert result.exit_code == 0, result.output
    stored = read_libcll_pickle(tmp_path / "vlm.pkl")
    assert ((stored.cl_labels - stored.ord_labels[:, None]) % 10 == np.array([2, 4])).all()


def test_export_mixed_image_sizes_need_image_size(tmp_path, digit_folder):
    from PIL import Image
    Image.new("RGB", (40, 40)).save(digit_folder / "3" / "zzbig.png")
    result = runner.invoke(app, ["export", str(digit_folder), str(tmp_path / "x.pkl")])
    assert result.exit_code == 2 and "zzbig.png" in result.output and "--image-size" in result.output
    result = runner.invoke(app, ["export", str(digit_folder), str(tmp_path / "x.pkl"), "--image-size", "16"])
    assert result.exit_code == 0 and read_libcll_pickle(tmp_path / "x.pkl").images.shape == (61, 16, 16, 3)


def test_cli_bad_inputs_exit_2_with_a_message(tmp_path, digit_folder):
    bad = tmp_path / "T.csv"
    np.savetxt(bad, np.full((3, 3), 1 / 3), delimiter=",")
    result = runner.invoke(app, ["train", "--dataset", str(digit_folder), "--transition-matrix", str(bad),
                                 "--epoch", "1", "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 2
    assert "T.csv" in result.output and "(10, 10)" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["train", "--dataset", str(tmp_path / "nope"), "--output-dir", str(tmp_path)])
    assert result.exit_code == 2 and "not found" in result.output
    result = runner.invoke(app, ["train", "--strategy", "SCL", "--type", "XX", "--dataset", str(digit_folder)])
    assert result.exit_code == 2 and "SCL-NL" in result.output


def test_vlm_run_keys_with_a_longer_root_match_by_path_tail(tmp_path, digit_folder):
    base = read_image_folder(digit_folder)
    run = write_vlm_run(tmp_path / "run", [{"image": f"digits/{name}", "round": 0, "label": int((y + 1) % 10)}
                                           for name, y in zip(base.names, base.ord_labels)])
    train = load_sources(str(digit_folder), str(run)).train
    assert len(train) == 60 and ((train.cl_labels[:, 0] - train.ord_labels) % 10 == 1).all()


def test_label_file_keeps_the_first_three_cls_by_default_like_the_seed(tmp_path, digit_folder):
    from trainers.train import TrainConfig, prepare

    _, rows = cl_rows(digit_folder, offsets=(1, 2, 3, 4))
    path = write_auto_labels(tmp_path / "auto_labels.csv", rows)
    default = prepare(TrainConfig(data=str(digit_folder), label_path=str(path), long_label=True))
    assert default.train.cl_labels.shape[1] == 3 and not default.synthetic
    one = prepare(TrainConfig(data=str(digit_folder), label_path=str(path), long_label=True, num_cl=1))
    assert one.train.cl_labels.shape[1] == 1
    synthetic = prepare(TrainConfig(data=str(digit_folder)))
    assert synthetic.synthetic and synthetic.train.cl_labels.shape[1] == 1 and synthetic.info.oracle


def test_classification_csv_round_trip_from_another_working_directory(tmp_path, digit_folder, monkeypatch):
    """Export with relative paths from one folder, read back from another: one rule (relative to the CSV)."""
    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    relative_data = f"../{digit_folder.relative_to(tmp_path).as_posix()}"
    result = runner.invoke(app, ["export", relative_data, "out/labels.csv"])
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(tmp_path / "elsewhere")
    back = read_any(tmp_path / "work" / "out" / "labels.csv", classes=DIGITS)
    original = read_image_folder(digit_folder)
    assert [p.resolve() for p in back.paths] == [p.resolve() for p in original.paths]
    assert np.array_equal(back.ord_labels, original.ord_labels)


def test_image_folder_export_keeps_same_named_files_of_two_folders(tmp_path, digit_folder):
    """`airplane/0000.png` and `automobile/0000.png` both labelled airplane: both survive, under distinct names."""
    import shutil

    from trainers.export import export

    source = read_image_folder(digit_folder)
    for folder, image in (("airplane", source.paths[0]), ("automobile", source.paths[1])):
        (tmp_path / "in" / folder).mkdir(parents=True)
        shutil.copyfile(image, tmp_path / "in" / folder / "0000.png")
    labels = read_image_folder(tmp_path / "in")
    labels.ord_labels[:] = 0
    root = export(labels, tmp_path / "tree")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == [
        "airplane/airplane_0000.png", "airplane/automobile_0000.png"]
    assert (root / "airplane" / "automobile_0000.png").read_bytes() == source.paths[1].read_bytes()


def test_image_folder_export_checks_every_name_before_copying(tmp_path, digit_folder):
    from trainers.export import export
    from trainers.formats.image_folder import ImageFolderError

    labels = read_image_folder(digit_folder).subset([0, 1, 2])
    labels.names[:] = ["a/b_c.png", "a_b/c.png", "x/c.png"]  # flattened, the first two are both a_b_c.png
    with pytest.raises(ImageFolderError, match="nothing was written"):
        export(labels, tmp_path / "tree")
    assert not (tmp_path / "tree").exists()


def test_ord_on_a_label_studio_export_trains_on_its_labels_and_refuses_cl_only_exports(tmp_path, digit_folder):
    base, path = ls_export(digit_folder, tmp_path / "export.json")
    tasks = json.loads(path.read_text())
    for task in tasks[::2]:  # the gold half says every digit is a "0": Ord must learn that, not the folder
        next(r for r in task["annotations"][0]["result"] if r["from_name"] == "label")["value"]["choices"] = ["0"]
    path.write_text(json.dumps(tasks))
    train = load_sources(str(digit_folder), str(path), ordinary=True).train
    assert (train.ord_labels[::2] == 0).all() and (train.ord_labels[1::2] == -1).all()
    assert (train.truth == base.ord_labels).all()  # validation still sees the folder's classes
    for task in tasks:
        task["annotations"][0]["result"] = [r for r in task["annotations"][0]["result"] if r["from_name"] != "label"]
    path.write_text(json.dumps(tasks))
    with pytest.raises(DataSourceError, match="no task has an ordinary label"):
        load_sources(str(digit_folder), str(path), ordinary=True)
