"""`--ordinary-labels`: the VLM's ordinary labels of the same images, trained on beside the complementary labels."""
import json

import numpy as np
import pytest
import torch

from labelers.formats.auto_labels import write_auto_labels
from trainers.train import TrainConfig, ordinary_targets, prepare, run

from .conftest import DIGITS


def _write_ordinary_run(run_dir, keys, paths, labels, class_names):
    """Write a minimal ordinary VLM run (run.json + labels.jsonl, records in the given order) and return its dir."""
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"mode": "ordinary", "class_names": class_names}))
    with open(run_dir / "labels.jsonl", "w") as fh:
        for index, (key, path, label) in enumerate(zip(keys, paths, labels)):
            fh.write(json.dumps({"image": key, "index": index, "path": str(path), "round": 0,
                                 "label": int(label)}) + "\n")
    return run_dir


@pytest.fixture()
def folder_with_both(tmp_path, digit_folder):
    """Return (folder, CL csv, ordinary run, {name: truth}, {name: CL}, {name: ordinary label}) over 60 digits."""
    from trainers.formats.image_folder import read_image_folder

    base = read_image_folder(digit_folder)
    rng = np.random.default_rng(0)
    cl = {n: int((t + rng.integers(1, 10)) % 10) for n, t in zip(base.names, base.ord_labels)}
    csv = write_auto_labels(tmp_path / "cl" / "auto_labels.csv", [(n, [DIGITS[cl[n]]]) for n in base.names])
    # ordinary labels: right, except 5 images labelled with their own CL (a contradiction) and 5 simply wrong
    ordinary = {n: int(t) for n, t in zip(base.names, base.ord_labels)}
    for n in base.names[:5]:
        ordinary[n] = cl[n]
    for n, t in zip(base.names[5:10], base.ord_labels[5:10]):
        ordinary[n] = min(set(range(10)) - {cl[n], int(t)})  # wrong, but not one of its CLs
    order = rng.permutation(len(base))  # a different order from the dataset's: position matching would fail
    run_dir = _write_ordinary_run(tmp_path / "ord_run", [base.names[i] for i in order],
                                  [base.paths[i] for i in order], [ordinary[base.names[i]] for i in order], DIGITS)
    truth = dict(zip(base.names, base.ord_labels.tolist()))
    return digit_folder, csv, run_dir, truth, cl, ordinary


def test_ordinary_labels_match_by_key_from_another_directory_and_never_become_truth(tmp_path, monkeypatch,
                                                                                    folder_with_both):
    from trainers.datamodules import CLDataModule

    folder, csv, run_dir, truth, cl, ordinary = folder_with_both
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = TrainConfig(strategy="FWD", data=str(folder), label_path=str(csv), ordinary_labels=str(run_dir),
                      long_label=True, num_cl=1, progress=False)
    data = prepare(cfg)
    train = data.train
    names = train.names
    expected = [-1 if ordinary[n] == cl[n] else ordinary[n] for n in names]
    assert train.vlm_labels.tolist() == expected
    assert train.truth.tolist() == [truth[n] for n in names]  # validation and truth untouched
    assert train.meta["ordinary_contradictions"] == 5
    dm = CLDataModule(train, torch.zeros(len(train), 1), data.valid_index,
                      train_targets=ordinary_targets(cfg, train))
    assert dm.train_data.true.tolist() == [expected[i] for i in dm.train_index]
    assert dm.valid_data.true.tolist() == [truth[names[i]] for i in dm.valid_index]


def test_a_complementary_run_is_refused_as_ordinary_labels(tmp_path, folder_with_both):
    folder, csv, run_dir, *_ = folder_with_both
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**meta, "mode": "complementary"}))
    cfg = TrainConfig(strategy="FWD", data=str(folder), label_path=str(csv), ordinary_labels=str(run_dir),
                      long_label=True, num_cl=1, progress=False)
    with pytest.raises(ValueError, match="complementary labels"):
        prepare(cfg)


def test_ordinary_term_is_w_times_the_hand_computed_cross_entropy():
    from trainers.matrices import uniform
    from trainers.module import CLLModule

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-1.0, 3.0, 1.0]])
    cl = torch.tensor([[1], [2], [0]])
    targets = torch.tensor([0, -1, 2])  # the second image has no ordinary label
    w = 0.7

    def loss(weight):
        module = CLLModule(torch.nn.Identity(), "FWD", None, uniform(3), ordinary_weight=weight)
        return float(module.compute_loss(logits, cl, targets))

    z = logits.double().numpy()
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    hand = -(log_p[0, 0] + log_p[2, 2]) / 2
    assert loss(w) - loss(0.0) == pytest.approx(w * hand, rel=1e-5)


def test_noisy_ordinary_labels_improve_accuracy_over_cls_alone(tmp_path):
    """6 overlapping Gaussian classes, 1 uniform CL each; ordinary labels 30 % wrong (uniform) still add accuracy."""
    rng = np.random.default_rng(3)
    K, D, n, n_test = 6, 6, 800, 800
    means = rng.normal(0, 1.2, (K, D))
    y, y_test = rng.integers(0, K, n), rng.integers(0, K, n_test)
    x, x_test = means[y] + rng.normal(0, 1, (n, D)), means[y_test] + rng.normal(0, 1, (n_test, D))
    cl = (y + rng.integers(1, K, n)) % K
    names = [f"img{i:04d}.png" for i in range(n)]
    classes = ["ant", "bee", "cat", "dog", "eel", "fox"]
    npz = tmp_path / "feats.npz"
    np.savez(npz, features=x.astype(np.float32), labels=y, names=np.array(names), class_names=np.array(classes),
             cl_labels=cl[:, None], test_features=x_test.astype(np.float32), test_labels=y_test)
    noisy = np.where(rng.random(n) < 0.3, (y + rng.integers(1, K, n)) % K, y)
    csv = write_auto_labels(tmp_path / "ord" / "auto_labels.csv", [(nm, [classes[c]]) for nm, c in zip(names, noisy)])

    def accuracy(**extra):
        out = tmp_path / ("with" if extra else "without")
        results = run(TrainConfig(strategy="FWD", model="linear", data=str(npz), num_cl=1, epoch=8, lr=1e-2,
                                  batch_size=64, output_dir=str(out), progress=False, accelerator="cpu", **extra))
        return results

    alone = accuracy()
    both = accuracy(ordinary_labels=str(csv))
    assert both["ordinary_labels"]["contradictions_dropped"] == int((noisy == cl).sum())
    assert both["ordinary_weight"] == 1.0
    print("test accuracy: CLs alone", alone["test_Accuracy"], "with ordinary labels", both["test_Accuracy"])
    assert both["test_Accuracy"] > alone["test_Accuracy"] + 0.05, (alone["test_Accuracy"], both["test_Accuracy"])


def test_cli_trains_with_ordinary_labels_and_reports_the_contradictions(tmp_path, folder_with_both):
    from typer.testing import CliRunner

    from labelloop.cli import app

    folder, csv, run_dir, *_ = folder_with_both
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["train", "--strategy", "FWD", "--model", "linear", "--data", str(folder),
                                      "--label-path", str(csv), "--long-label", "--num-cl", "1",
                                      "--ordinary-labels", str(run_dir), "--ordinary-weight", "0.5", "--epoch", "1",
                                      "--output-dir", str(out), "--no-progress", "--accelerator", "cpu"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())["results"]
    assert results["ordinary_weight"] == 0.5
    assert results["ordinary_labels"]["contradictions_dropped"] == 5
    assert results["ordinary_labels"]["images"] == 55


def test_ordinary_labels_are_refused_for_ord(tmp_path, folder_with_both):
    folder, csv, run_dir, *_ = folder_with_both
    cfg = TrainConfig(strategy="Ord", data=str(folder), ordinary_labels=str(run_dir), progress=False)
    with pytest.raises(ValueError, match="--ordinary-labels"):
        prepare(cfg)
