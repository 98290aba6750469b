"""Real training runs: MNIST learns from one uniform CL per image; runs are seeded; the seed's CLI ports."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from labelers.formats.auto_labels import write_auto_labels
from labelers.sample_data import load_mnist
from labelloop.cli import app
from trainers import matrices
from trainers.formats.image_folder import read_image_folder
from trainers.module import CLLModule
from trainers.models import build_model
from trainers.train import TrainConfig, TrainError, run

from .conftest import DIGITS

runner = CliRunner()


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    """Every training test here runs with one torch thread (shared fixture in tests/conftest.py)."""


@pytest.fixture(scope="module")
def mnist_features(tmp_path_factory):
    """An .npz of flattened real MNIST digits (2000 train / 1000 test) as 'frozen features'."""
    images, labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    path = tmp_path_factory.mktemp("npz") / "mnist_features.npz"
    np.savez(path, features=images[:2000].reshape(2000, -1) / 255.0, labels=labels[:2000],
             test_features=test_images[:1000].reshape(1000, -1) / 255.0, test_labels=test_labels[:1000],
             class_names=np.array(DIGITS))
    return path


@pytest.mark.slow
def test_mnist_forward_correction_learns_from_one_uniform_cl(tmp_path):
    results = run(TrainConfig(strategy="FWD", model="mlp", data="mnist", max_train=10000, epoch=5, batch_size=128,
                              lr=1e-3, num_cl=1, output_dir=str(tmp_path), progress=False, seed=7))
    assert results["test_Accuracy"] >= 0.6  # chance is 0.1
    assert results["synthetic_cls"] and results["matrix_oracle"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"]["test_Accuracy"] == results["test_Accuracy"]
    assert (tmp_path / "checkpoints" / "best.ckpt").exists() and (tmp_path / "checkpoints" / "last.ckpt").exists()
    metrics_csv = next((tmp_path / "logs").rglob("metrics.csv")).read_text()
    assert "valid_Accuracy" in metrics_csv and "valid_SCEL" in metrics_csv and "train_loss" in metrics_csv


def test_same_seed_same_result_other_seed_differs(tmp_path, mnist_features):
    def once(seed, name):
        return run(TrainConfig(strategy="SCL", type="NL", model="linear", data=str(mnist_features), epoch=2,
                               batch_size=64, output_dir=str(tmp_path / name), progress=False, seed=seed))
    a, b, c = once(3, "a"), once(3, "b"), once(4, "c")
    assert a["test_Accuracy"] == b["test_Accuracy"] and a["best_valid"] == b["best_valid"]
    assert a["best_valid"] != c["best_valid"]


@pytest.mark.parametrize("strategy,kind", [("URE", "GA"), ("URE", "TNN"), ("DM", None), ("CPE", "T"),
                                           ("MCL", "LOG"), ("SCL", "EXP"), ("Ord", None), ("PC", None),
                                           ("OP", None)])
def test_every_strategy_trains_on_frozen_features(tmp_path, mnist_features, strategy, kind):
    results = run(TrainConfig(strategy=strategy, type=kind, model="mlp", data=str(mnist_features), epoch=3,
                              batch_size=64, num_cl=3, output_dir=str(tmp_path), progress=False,
                              transition_matrix="uniform"))
    assert results["inputs"] == "features"
    assert results["test_Accuracy"] > 0.3  # three CLs per image, 1800 images: well above chance (0.1)


def test_cpe_t_starts_from_log_t_plus_delta_and_keeps_t_on_the_model_device():
    T = matrices.uniform(4)
    module = CLLModule(build_model("linear", (3,), 4), "CPE", "T", T)
    assert torch.isfinite(module.W).all()  # log(0 + delta), not -inf
    assert torch.allclose(module.loss_matrix(), torch.tensor(T, dtype=torch.float32), atol=0.01)
    assert module.T_given.device == next(module.model.parameters()).device
    assert "T_given" in module.state_dict()  # a buffer: moves with .to(device)


def test_scel_is_the_default_without_true_labels(tmp_path, digit_folder):
    flat = tmp_path / "flat"
    flat.mkdir()
    base = read_image_folder(digit_folder)
    rows = []
    for i, (path, y) in enumerate(zip(base.paths, base.ord_labels)):
        (flat / f"{i:03d}.png").write_bytes(path.read_bytes())
        rows.append((f"{i:03d}.png", [DIGITS[(y + 1) % 10], DIGITS[(y + 2) % 10]]))
    labels = write_auto_labels(tmp_path / "auto_labels.csv", rows)
    results = run(TrainConfig(strategy="FWD", data=str(flat), label_path=str(labels), classes=DIGITS,
                              long_label=True, num_cl=2, epoch=1, output_dir=str(tmp_path / "out"), progress=False))
    assert results["valid_type"] == "SCEL" and "test_Accuracy" not in results
    with pytest.raises(TrainError, match="SCEL"):
        run(TrainConfig(strategy="FWD", data=str(flat), label_path=str(labels), classes=DIGITS, long_label=True,
                        valid_type="Accuracy", epoch=1, output_dir=str(tmp_path / "o2"), progress=False))
    with pytest.raises(Exception, match="empirical transition matrix needs gold"):
        run(TrainConfig(strategy="FWD", data=str(flat), label_path=str(labels), classes=DIGITS, long_label=True,
                        transition_matrix="empirical", epoch=1, output_dir=str(tmp_path / "o3"), progress=False))


def test_seed_command_ports_by_renaming_the_program(tmp_path, digit_folder):
    """The seed's `python train.py ...` line, underscore spellings included, on our own export."""
    base = read_image_folder(digit_folder)
    rows = [(name.split("/")[1], [DIGITS[(y + k) % 10] for k in (1, 3, 5)])
            for name, y in zip(base.names, base.ord_labels)]
    labels = write_auto_labels(tmp_path / "auto_labels.csv", rows)
    result = runner.invoke(app, [
        "train", "--strategy", "CPE", "--type", "F", "--model", "ResNet18", "--dataset", str(digit_folder),
        "--lr", "1e-3", "--batch_size", "32", "--epoch", "1", "--valid_type", "Accuracy",
        "--output_dir", str(tmp_path / "run"), "--label_path", str(labels), "--long_label", "--do_transform",
        "--num_cl", "3", "--transition-matrix", "empirical", "--seed", "1126", "--image-size", "16",
        "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
    assert saved["strategy"] == "CPE-F" and saved["num_cl"] == 3 and saved["valid_type"] == "Accuracy"
    assert saved["gold_labels"] == saved["train_images"] and saved["matrix_oracle"]
    T = matrices.load(tmp_path / "run" / "transition_matrix.csv", 10)
    assert np.allclose(T[0][[1, 3, 5]], 1 / 3)  # the empirical matrix of these CLs


def test_training_on_an_exported_libcll_pickle(tmp_path, digit_folder):
    """Label Studio export -> libcll pickle -> the seed's training command (renamed) on that pickle."""
    from .test_sources_export import ls_export

    _, export = ls_export(digit_folder, tmp_path / "export.json")
    assert runner.invoke(app, ["export", str(export), str(tmp_path / "set.pkl"),
                               "--classes", ",".join(DIGITS)]).exit_code == 0
    result = runner.invoke(app, [
        "train", "--strategy", "MCL", "--type", "MAE", "--model", "MLP", "--dataset", str(tmp_path / "set.pkl"),
        "--lr", "1e-3", "--batch_size", "16", "--epoch", "2", "--valid_type", "SCEL", "--num_cl", "2",
        "--output_dir", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
    assert saved["strategy"] == "MCL-MAE" and saved["num_cl"] == 2 and not saved["synthetic_cls"]
    assert saved["train_images"] + saved["valid_images"] == 60


def test_cifar_style_image_arrays_train(tmp_path):
    """An .npz of uint8 colour images (CIFAR layout) with a test split, augmented, trains an MLP."""
    from labelers.sample_data import CIFAR10_CLASSES, cifar10_subset
    from PIL import Image

    def arrays(split, per_class):
        paths, labels = cifar10_subset(split, per_class)
        return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]), labels
    images, labels = arrays("train", 4)
    test_images, test_labels = arrays("test", 2)
    path = tmp_path / "cifar_arrays.npz"
    np.savez(path, images=images, labels=labels, test_images=test_images, test_labels=test_labels,
             class_names=np.array(CIFAR10_CLASSES))
    results = run(TrainConfig(strategy="SCL", type="NL", model="mlp", data=str(path), epoch=1, batch_size=8,
                              num_cl=2, augment=True, output_dir=str(tmp_path / "out"), progress=False))
    assert results["inputs"] == "images" and results["classes"] == CIFAR10_CLASSES
    assert results["train_images"] + results["valid_images"] == 40
    # the reported test accuracy is the best checkpoint's, recomputed here from its weights by hand
    from trainers.datamodules import scale_uint8

    state = torch.load(results["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    module = CLLModule(build_model("mlp", (3, 32, 32), 10), "SCL", "NL", matrices.uniform(10), prior=np.ones(10) / 10)
    module.load_state_dict(state)
    x = scale_uint8(torch.from_numpy(test_images).permute(0, 3, 1, 2).contiguous())
    with torch.no_grad():
        predicted = module(x).argmax(1).numpy()
    assert results["test_Accuracy"] == pytest.approx(float((predicted == test_labels).mean()))


@pytest.fixture(scope="module")
def mnist_small_npz(tmp_path_factory):
    """An .npz of 600 flattened real MNIST training digits with names 000000.. and true labels."""
    images, labels = load_mnist("train")
    path = tmp_path_factory.mktemp("npz") / "mnist600.npz"
    np.savez(path, features=images[:600].reshape(600, -1) / 255.0, labels=labels[:600], class_names=np.array(DIGITS))
    return path


def test_last_checkpoint_is_the_final_epoch_not_a_copy_of_best(tmp_path, mnist_small_npz):
    """lr 10 makes validation accuracy peak before the last of 4 epochs (seeded, so always the same run)."""
    results = run(TrainConfig(strategy="Ord", model="linear", data=str(mnist_small_npz), epoch=4, lr=10.0,
                              batch_size=64, output_dir=str(tmp_path / "run"), progress=False))
    assert results["best_epoch"] < 3  # the precondition: the best epoch was an earlier one
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(results["best_checkpoint"], map_location="cpu", weights_only=False)
    assert last["epoch"] == results["last_epoch"] == 3 and best["epoch"] == results["best_epoch"]
    weights = [key for key in last["state_dict"] if key.startswith("model.")]
    assert weights and not all(torch.equal(last["state_dict"][k], best["state_dict"][k]) for k in weights)


def test_ord_on_a_label_file_validates_against_the_true_labels(tmp_path, mnist_small_npz):
    """Every label in the file is wrong (digit + 1): Ord learns them, and validation must say so."""
    data = np.load(mnist_small_npz)
    rows = [(f"{i:06d}", [DIGITS[(int(y) + 1) % 10]]) for i, y in enumerate(data["labels"])]
    labels = write_auto_labels(tmp_path / "auto_labels.csv", rows)
    results = run(TrainConfig(strategy="Ord", model="linear", data=str(mnist_small_npz), label_path=str(labels),
                              long_label=True, epoch=3, lr=1e-2, batch_size=64, output_dir=str(tmp_path / "run"),
                              progress=False))
    assert results["valid_labels"] == "true labels" and results["valid_label_count"] == 60
    assert results["best_valid"] < 0.2  # against the file's own labels this run scores about 0.8


def test_ord_refuses_complementary_labels_and_warns_on_a_bare_csv(tmp_path, mnist_small_npz, caplog):
    data = np.load(mnist_small_npz)
    rows = [(f"{i:06d}", [DIGITS[(int(y) + 1) % 10]]) for i, y in enumerate(data["labels"])]
    run_dir = tmp_path / "vlm_run"
    write_auto_labels(run_dir / "auto_labels.csv", rows)
    (run_dir / "run.json").write_text(json.dumps({"mode": "complementary", "class_names": DIGITS}))
    cfg = dict(strategy="Ord", model="linear", data=str(mnist_small_npz), long_label=True, epoch=1, progress=False)
    with pytest.raises(ValueError, match="complementary labels .*cannot be read as ordinary labels"):
        run(TrainConfig(label_path=str(run_dir / "auto_labels.csv"), output_dir=str(tmp_path / "a"), **cfg))
    bare = write_auto_labels(tmp_path / "auto_labels.csv", rows)
    with caplog.at_level("WARNING"):
        run(TrainConfig(label_path=str(bare), output_dir=str(tmp_path / "b"), **cfg))
    assert "read as ORDINARY labels" in caplog.text


def test_gold_count_needs_an_empirical_matrix(tmp_path, mnist_small_npz):
    with pytest.raises(TrainError, match="--gold-count only applies to --transition-matrix empirical"):
        run(TrainConfig(strategy="FWD", data=str(mnist_small_npz), gold_count=50, epoch=1,
                        output_dir=str(tmp_path / "run"), progress=False))


def test_gold_count_run_validates_on_no_more_than_its_gold_labels(tmp_path, mnist_small_npz):
    results = run(TrainConfig(strategy="FWD", model="linear", data=str(mnist_small_npz), synthetic_matrix="uniform",
                              transition_matrix="empirical", gold_count=50, epoch=1, output_dir=str(tmp_path / "run"),
                              progress=False))
    assert results["valid_type"] == "Accuracy" and results["valid_labels"] == "gold labels"
    assert 0 < results["valid_label_count"] and results["valid_label_count"] + results["gold_labels"] == 50


def test_repeated_cls_are_kept_in_training_and_written_once_in_the_label_studio_export(tmp_path, digit_folder):
    """One rule: each round is an answer, so training keeps a repeat; Label Studio Choices hold the set."""
    from trainers.export import export, read_any
    from trainers.train import prepare

    base = read_image_folder(digit_folder)
    rows = [(name, [DIGITS[(y + 1) % 10], DIGITS[(y + 1) % 10], DIGITS[(y + 2) % 10]])
            for name, y in zip(base.names, base.ord_labels)]
    labels = write_auto_labels(tmp_path / "auto_labels.csv", rows)
    data = prepare(TrainConfig(strategy="FWD", data=str(digit_folder), label_path=str(labels), long_label=True))
    expected = np.stack([(data.train.ord_labels + 1) % 10, (data.train.ord_labels + 1) % 10,
                         (data.train.ord_labels + 2) % 10], axis=1)
    assert (data.train.cl_labels == expected).all() and data.train.meta["repeated_cls"] == 60
    target = export(read_any(labels, str(digit_folder), long_label=True), tmp_path / "tasks.json")
    results = json.loads(target.read_text())[0]["annotations"][0]["result"]
    chosen = next(r["value"]["choices"] for r in results if r["from_name"] == "complementary")
    assert chosen == [rows[0][1][0], rows[0][1][2]]
