"""auto_labels.csv: seed layout round trip, name <-> index mapping, short-name collision check."""
import pytest

from labelers.formats.auto_labels import (AutoLabelsError, labels_to_indices, read_auto_labels,
                                          write_auto_labels)
from labelers.formats.class_names import ShortNameCollision, display_names


def test_round_trip_keeps_seed_layout(tmp_path):
    rows = [("camion_s_000148.png", ["dog", "dog", "frog"]), ("a,b.png", ["cat", "ship", "truck"])]
    path = write_auto_labels(tmp_path / "auto_labels.csv", rows)
    text = path.read_text().splitlines()
    assert text[0] == "camion_s_000148.png,dog,dog,frog"  # no header, names only
    assert text[1] == '"a,b.png",cat,ship,truck'
    assert read_auto_labels(path) == rows


def test_reads_a_seed_file_written_by_hand(tmp_path):
    path = tmp_path / "auto_labels.csv"
    path.write_text("x.png,dog,dog,frog\n\ny.png,cat,ship,truck\n")
    assert read_auto_labels(path) == [("x.png", ["dog", "dog", "frog"]), ("y.png", ["cat", "ship", "truck"])]


def test_ragged_or_empty_rows_are_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("x.png,dog,frog\ny.png,cat\n")
    with pytest.raises(AutoLabelsError, match=r"bad.csv: line 2 \(y.png\)"):
        read_auto_labels(path)
    path.write_text("x.png,dog,,frog\n")
    with pytest.raises(AutoLabelsError, match="line 1"):
        read_auto_labels(path)
    with pytest.raises(AutoLabelsError, match="row 2"):
        write_auto_labels(path, [("a", ["x"]), ("b", ["x", "y"])])


def test_names_map_to_indices_and_unknown_names_fail():
    classes = ["sulphur butterfly", "magnetic compass", "persian cat"]
    rows = [("a.png", ["butterfly", "Cat"])]
    assert labels_to_indices(rows, classes, long_label=False) == [("a.png", [0, 2])]
    with pytest.raises(AutoLabelsError, match=r"row 1 \(a.png\).*'butterfly'"):
        labels_to_indices(rows, classes, long_label=True)
    assert labels_to_indices([("b.png", ["unparseable", "cat"])], classes, False) == [("b.png", [-1, 2])]


def test_short_names_that_merge_classes_raise():
    classes = ["aquatic mammals", "small mammals", "vehicles 1"]
    assert display_names(classes, long_label=True) == classes
    with pytest.raises(ShortNameCollision, match="aquatic mammals.*small mammals"):
        display_names(classes, long_label=False)
    assert display_names(["persian cat", "dog"], long_label=False) == ["cat", "dog"]
