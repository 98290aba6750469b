"""Training runs with estimated matrices (shrunk from gold, anchor/EM without gold) and label-free selection."""
import json

import numpy as np
import pytest

from labelers.sample_data import load_mnist
from trainers import matrices
from trainers.matrix_estimation import distance
from trainers.train import TrainConfig, TrainError, run

from .conftest import DIGITS
from .test_matrix_estimation import rounds

TRUE_T = matrices.strong(10, seed=4)


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    """One torch thread (shared fixture in tests/conftest.py)."""


@pytest.fixture(scope="module")
def strong_cl_npz(tmp_path_factory):
    """An .npz of 1000 flattened MNIST digits with 3 CLs each, every round an independent draw from TRUE_T."""
    images, labels = load_mnist("train")
    labels = labels[:1000].astype(np.int64)
    cl = rounds(labels, TRUE_T, 3, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("npz") / "strong.npz"
    np.savez(path, features=images[:1000].reshape(1000, -1) / 255.0, labels=labels, cl_labels=cl,
             class_names=np.array(DIGITS))
    return path


def _matrix(output):
    return np.loadtxt(output / "transition_matrix.csv", delimiter=",")


def test_shrunk_run_estimates_from_its_gold_only_and_beats_uniform(tmp_path, strong_cl_npz):
    out = tmp_path / "run"
    results = run(TrainConfig(strategy="FWD-JOINT", model="linear", data=str(strong_cl_npz), num_cl=3, epoch=1,
                              transition_matrix="shrunk", gold_count=200, output_dir=str(out), progress=False))
    assert results["transition_matrix"].startswith("shrunk toward") and not results["matrix_oracle"]
    assert results["gold_labels"] + results["valid_label_count"] == 200 and results["valid_labels"] == "gold labels"
    uniform_gap = distance(matrices.uniform(10), TRUE_T)["frobenius"]
    assert distance(_matrix(out), TRUE_T)["frobenius"] < 0.6 * uniform_gap


def test_em_run_estimates_the_matrix_without_gold(tmp_path, strong_cl_npz):
    out = tmp_path / "run"
    results = run(TrainConfig(strategy="FWD", model="linear", data=str(strong_cl_npz), num_cl=3, epoch=4,
                              transition_matrix="em", matrix_rounds=1, valid_type="SCEL", output_dir=str(out),
                              progress=False))
    assert results["gold_labels"] is None and not results["matrix_oracle"] and "no gold" in results["transition_matrix"]
    assert results["valid_labels"] == "complementary labels"
    assert (out / "matrix_rounds" / "round0" / "transition_matrix.csv").exists()
    assert distance(_matrix(out), TRUE_T)["frobenius"] < distance(matrices.uniform(10), TRUE_T)["frobenius"]


def test_early_stopping_ends_the_run_after_patience_validations_without_progress(tmp_path):
    images, labels = load_mnist("train")
    path = tmp_path / "mnist.npz"
    np.savez(path, features=images[:600].reshape(600, -1) / 255.0, labels=labels[:600], class_names=np.array(DIGITS))
    # lr 10 makes validation accuracy peak in the first epochs (see test_training), so patience 1 stops early
    results = run(TrainConfig(strategy="Ord", model="linear", data=str(path), epoch=12, lr=10.0, batch_size=64,
                              early_stop=1, output_dir=str(tmp_path / "run"), progress=False))
    assert results["last_epoch"] == results["best_epoch"] + 1 < 11
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
    assert saved["early_stop"] == 1


@pytest.mark.parametrize("settings, message", [
    (dict(ordinary_weight=1.0, transition_matrix="shrunk"), "without it every true label"),
    (dict(ordinary_weight=1.0, strategy="Ord"), "Ord already trains"),
    (dict(transition_matrix="anchor", gold_count=10), "only applies to --transition-matrix empirical or shrunk"),
    (dict(transition_matrix="shrunk:abc", gold_count=50), "needs a number"),
])
def test_bad_matrix_options_are_refused_with_a_message(tmp_path, strong_cl_npz, settings, message):
    cfg = dict(strategy="FWD", data=str(strong_cl_npz), num_cl=3, epoch=1, output_dir=str(tmp_path), progress=False)
    cfg.update(settings)
    with pytest.raises((TrainError, matrices.TransitionMatrixError), match=message):
        run(TrainConfig(**cfg))


def test_restarts_keep_the_initialisation_with_the_best_validation_score(tmp_path, strong_cl_npz):
    out = tmp_path / "run"
    results = run(TrainConfig(strategy="FWD", model="linear", data=str(strong_cl_npz), num_cl=3, epoch=2,
                              transition_matrix=str(_save_true(tmp_path)), valid_type="SCEL", restarts=3,
                              output_dir=str(out), progress=False))
    scores = results["restart_scores"]
    assert len(scores) == 3 and len(set(scores)) == 3  # different initialisations, different scores
    assert results["best_valid"] == pytest.approx(min(scores))
    winner = scores.index(min(scores))
    assert results["best_checkpoint"].startswith(str(out if winner == 0 else out / "restarts" / str(winner)))


def _save_true(tmp_path):
    return matrices.save(TRUE_T, tmp_path / "true_T.npy")


def test_cli_passes_the_matrix_and_selection_options(tmp_path, strong_cl_npz):
    from typer.testing import CliRunner

    from labelloop.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["train", "--strategy", "FWD", "--type", "JOINT", "--model", "linear",
                                      "--data", str(strong_cl_npz), "--num-cl", "3", "--epoch", "1",
                                      "--transition-matrix", "shrunk:20", "--gold-count", "100",
                                      "--ordinary-weight", "0.5", "--weight-decay", "1e-3", "--early-stop", "2",
                                      "--output-dir", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["strategy"] == "FWD-JOINT"
    assert saved["results"]["transition_matrix"].startswith("shrunk toward uniform (strength 20, fixed)")
    assert (saved["config"]["ordinary_weight"], saved["config"]["weight_decay"], saved["config"]["early_stop"]) \
        == (0.5, 1e-3, 2)
