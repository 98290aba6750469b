"""`labelloop export ... --format relabel-json`: the relabeler's JSON + class-index file, read back by the
relabeler's own reader (round trip)."""
import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from labelloop.cli import app
from labelers.formats.relabel_json import read_class_index, read_relabel_json
from labelers.relabel.inputs import read_input
from trainers.formats.image_folder import read_image_folder

from .conftest import DIGITS


def test_export_to_the_relabel_json_round_trips_through_the_relabelers_reader(tmp_path, digit_folder):
    target = tmp_path / "out" / "train1.json"
    result = CliRunner().invoke(app, ["export", str(digit_folder), str(target), "--format", "relabel-json"])
    assert result.exit_code == 0, result.output
    index_file = tmp_path / "out" / "train1_class_index.json"
    assert read_class_index(index_file).names == DIGITS
    assert json.loads(index_file.read_text())["3"] == ["3", "3"]  # the seed's {"i": [id, name]} shape
    original = read_image_folder(digit_folder)
    rows = read_relabel_json(target, len(DIGITS))
    assert [labels for _, labels in rows] == [[int(y)] for y in original.ord_labels]
    back = read_input(target, index_file)  # what `labelloop relabel --data` reads
    assert [Path(p).resolve() for p in back.paths] == [Path(p).resolve() for p in original.paths]
    assert np.array_equal(back.original, original.ord_labels) and back.class_names == DIGITS


def test_export_to_the_relabel_json_leaves_out_unlabeled_images_and_refuses_none(tmp_path, caplog):
    from trainers.export import ExportError, write_relabel_target
    from trainers.labelset import LabelSet

    labels = LabelSet(["a", "b"], ["x.png", "y.png", "z.png"], np.full((3, 1), -1), np.array([1, -1, 0]))
    write_relabel_target(labels, tmp_path / "l.json")
    assert read_relabel_json(tmp_path / "l.json") == [("x.png", [1]), ("z.png", [0])]
    assert "1 of 3 images have no ordinary label" in caplog.text and "y.png" in caplog.text
    none = LabelSet(["a", "b"], ["x.png"], np.full((1, 1), -1), np.array([-1]))
    try:
        write_relabel_target(none, tmp_path / "n.json")
    except ExportError as err:
        assert "no image has an ordinary label" in str(err)
    else:
        raise AssertionError("an export without any label must be refused")
