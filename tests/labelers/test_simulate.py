"""`labelloop simulate` end to end on real MNIST digits embedded with the packaged EfficientNet-Lite0."""
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from labelers.datasets import DatasetError, load_feature_npz
from labelers.learning_curves import labels_to_reach, normalized_aulc
from labelers.sample_data import load_mnist, write_image_folder
from labelloop.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def mnist_folder(tmp_path_factory):
    images, labels = load_mnist("test")
    keep = np.concatenate([np.flatnonzero(labels == c)[:25] for c in range(10)])
    names = [f"digit{c}" for c in range(10)]
    return write_image_folder(images[keep], labels[keep], names, tmp_path_factory.mktemp("mnist") / "digits")


def test_simulate_image_folder_end_to_end(mnist_folder, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["simulate", str(mnist_folder), "--embedder", "efficientnet-lite0@64",
                                 "--cache", str(tmp_path / "c.sqlite"), "--strategies", "random,margin,entropy,least",
                                 "--initial", "20", "--batch-size", "20", "--rounds", "4", "--seeds", "3",
                                 "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    curves = pd.read_csv(out / "curves.csv")
    assert list(curves.columns) == ["strategy", "seed", "round", "n_labeled", "accuracy"]
    assert len(curves) == 4 * 3 * 5
    assert sorted(curves["n_labeled"].unique()) == [20, 40, 60, 80, 100]
    # Real features: 100 labels of MNIST must beat chance (0.1) by far for every strategy.
    assert curves[curves["n_labeled"] == 100]["accuracy"].min() > 0.5
    # Paired design: every strategy starts from the same initial pool, hence the same round-0 accuracy.
    assert curves[curves["round"] == 0].groupby("seed")["accuracy"].nunique().max() == 1
    assert (out / "curves.png").stat().st_size > 10_000
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert {"aulc", "aulc_ci", "aulc_gain", "labels_to_baseline_final"} <= set(summary.columns)
    assert "margin" in result.output and "aulc" in result.output


def test_simulate_npz_and_bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (3, 8))
    labels = np.repeat(np.arange(3), 40)
    np.savez(tmp_path / "ok.npz", features=centers[labels] + rng.normal(0, 0.3, (120, 8)), labels=labels)
    result = runner.invoke(app, ["simulate", str(tmp_path / "ok.npz"), "--seeds", "2", "--rounds", "2",
                                 "--initial", "6", "--batch-size", "6", "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output

    np.savez(tmp_path / "nolabels.npz", features=np.zeros((3, 2)))
    result = runner.invoke(app, ["simulate", str(tmp_path / "nolabels.npz")])
    assert result.exit_code == 2 and "missing array 'labels'" in result.output

    np.savez(tmp_path / "names.npz", features=np.zeros((3, 2)), labels=[0, 1, 2], class_names=["a", "b"])
    with pytest.raises(DatasetError, match="2 class_names but labels go up to 2"):
        load_feature_npz(tmp_path / "names.npz")

    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["simulate", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no class folders" in result.output

    (tmp_path / "partial" / "cat").mkdir(parents=True)
    (tmp_path / "partial" / "dog").mkdir()
    (tmp_path / "partial" / "cat" / "a.jpg").write_bytes(b"x")
    result = runner.invoke(app, ["simulate", str(tmp_path / "partial")])
    assert result.exit_code == 2 and "class 'dog' has no images" in result.output

    result = runner.invoke(app, ["simulate", str(tmp_path / "ok.npz"), "--strategies", "margin,bald"])
    assert result.exit_code == 2 and "unknown strategy 'bald'" in result.output

    result = runner.invoke(app, ["simulate", str(tmp_path / "ok.npz"), "--rounds", "50"])
    assert result.exit_code == 2 and "needs" in result.output


def test_curve_statistics_by_hand():
    assert normalized_aulc(np.array([0, 10, 20]), np.array([0.0, 1.0, 1.0])) == pytest.approx(0.75)
    assert labels_to_reach(np.array([10, 20, 30]), np.array([0.2, 0.4, 0.8]), 0.6) == pytest.approx(25.0)
    assert np.isnan(labels_to_reach(np.array([10, 20]), np.array([0.2, 0.4]), 0.9))
