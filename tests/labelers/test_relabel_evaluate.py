"""`labelloop relabel evaluate`: set metrics and a classifier's ReaL-style top-1, by hand; bad files named."""
import json

import pytest
from typer.testing import CliRunner

from labelloop.cli import app
from labelers.relabel.metrics import multi_hot, real_accuracy


def _write(path, rows):
    path.write_text(json.dumps({"data": [{"img_path": p, "labels": labels} for p, labels in rows]}))
    return path


@pytest.fixture
def files(tmp_path):
    predicted = _write(tmp_path / "labels.json", [("a.png", [0, 1]), ("b.png", [2]), ("c.png", [0]), ("d.png", [1])])
    truth = _write(tmp_path / "truth.json", [("a.png", [0]), ("b.png", [1, 2]), ("c.png", []), ("d.png", [1])])
    return tmp_path, predicted, truth


def test_real_accuracy_by_hand():
    truth = multi_hot([[0], [1, 2], [], [1]], 3)
    # a: 0 in {0} hit; b: 2 in {1, 2} hit; c: empty set, unscored; d: 0 not in {1} miss -> 2 of 3
    assert real_accuracy([0, 2, 0, 0], truth) == {"top1": pytest.approx(2 / 3), "scored": 3, "unscored": 1}
    with pytest.raises(ValueError, match="row 1: predicted class 3"):
        real_accuracy([0, 3, 0, 0], truth)
    with pytest.raises(ValueError, match="3 predictions for 4"):
        real_accuracy([0, 1, 0], truth)


def test_evaluate_reports_the_classifiers_real_top1(files):
    tmp_path, predicted, truth = files
    classifier = _write(tmp_path / "top1.json", [("d.png", [0]), ("a.png", [0]), ("b.png", [2]), ("c.png", [0])])
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(app, ["relabel", "evaluate", str(predicted), str(truth), "--classifier",
                                      str(classifier), "--output", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["classifier_top1"] == pytest.approx(2 / 3) and metrics["classifier_scored"] == 3
    # the label sets by hand: a J 1/2 P 1/2 R 1; b J 1/2 P 1 R 1/2; d all 1; c unscored
    assert metrics["precision"] == pytest.approx((0.5 + 1 + 1) / 3) and metrics["unscored"] == 1


def test_evaluate_names_a_classifier_row_with_several_labels_or_a_missing_image(files):
    tmp_path, predicted, truth = files
    several = _write(tmp_path / "several.json", [("a.png", [0, 1]), ("b.png", [2]), ("c.png", [0]), ("d.png", [1])])
    result = CliRunner().invoke(app, ["relabel", "evaluate", str(predicted), str(truth), "--classifier", str(several)])
    assert result.exit_code == 2 and "row 0 (a.png): 2 labels" in result.output
    partial = _write(tmp_path / "partial.json", [("a.png", [0])])
    result = CliRunner().invoke(app, ["relabel", "evaluate", str(predicted), str(truth), "--classifier", str(partial)])
    assert result.exit_code == 2 and "no prediction for 3 images, first b.png" in result.output


def test_evaluate_refuses_a_real_file_of_the_wrong_length(files):
    tmp_path, predicted, _ = files
    real = tmp_path / "real.json"
    real.write_text(json.dumps([[0], [1, 2], []]))  # 3 lists for 4 images
    result = CliRunner().invoke(app, ["relabel", "evaluate", str(predicted), str(real)])
    assert result.exit_code == 2 and "3 label lists for 4 images" in result.output
