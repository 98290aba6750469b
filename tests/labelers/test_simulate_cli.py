"""`labelloop simulate`, `embed` and `similar` as a user meets them, with a stub embedder that counts calls."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from labelers.learning_curves import NEVER_REACHED, format_summary, summarize
from labelers.simulate import SimulationSettings, initial_pool
from labelloop.cli import app

runner = CliRunner()


class StubEmbedder:
    """Embeds an image as its mean colour plus a constant; counts images and constructions."""

    id, dim = "stub@1", 4
    made = seen = 0

    def __init__(self):
        StubEmbedder.made += 1

    def preprocess(self, image):
        import torch

        return torch.tensor(np.asarray(image, np.float32).mean(axis=(0, 1)) / 255.0)

    def encode_batch(self, batch):
        StubEmbedder.seen += len(batch)
        return np.concatenate([batch.numpy(), np.ones((len(batch), 1))], axis=1).astype(np.float32)


@pytest.fixture
def stub(monkeypatch):
    StubEmbedder.made = StubEmbedder.seen = 0
    monkeypatch.setattr("labelers.embedders.make_embedder", lambda spec="auto", device="auto": StubEmbedder())
    return StubEmbedder


def colour_folder(root, classes, per_class=6):
    """root/<class>/<i>.png: class c is a shade of its own primary colour."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            colour = [30 + 10 * i] * 3
            colour[c % 3] = 250 - 5 * i
            Image.new("RGB", (4, 4), tuple(colour)).save(root / name / f"{i}.png")
    return root


def test_strategy_typos_fail_before_any_embedding(stub, tmp_path):
    folder = colour_folder(tmp_path / "data", ["a", "b"])
    for bad, message in (("margin,marign", "unknown strategy 'marign'"),
                         ("margin+kmean", "unknown modifier 'kmean'"), ("gaussian+nn0", "unknown modifier 'nn0'")):
        result = runner.invoke(app, ["simulate", str(folder), "--embedder", "stub", "--strategies", bad,
                                     "--cache", str(tmp_path / "c.sqlite")])
        assert result.exit_code == 2 and message in result.output
    result = runner.invoke(app, ["simulate", str(folder), "--seed-nn", "3", "--cache", str(tmp_path / "c.sqlite")])
    assert result.exit_code == 2 and "--seed-nn needs --ref-image" in result.output
    assert stub.made == 0 and stub.seen == 0


def test_embed_writes_the_test_set_and_checks_class_names(stub, tmp_path):
    train = colour_folder(tmp_path / "train", ["cat", "dog"])
    test = colour_folder(tmp_path / "test", ["cat", "dog"], per_class=3)
    out = tmp_path / "f.npz"
    result = runner.invoke(app, ["embed", str(train), "--test-folder", str(test), "-o", str(out), "--embedder", "stub",
                                 "--cache", str(tmp_path / "c.sqlite")])
    assert result.exit_code == 0, result.output
    data = np.load(out)
    assert data["features"].shape == (12, 4) and data["test_features"].shape == (6, 4)
    assert data["test_labels"].tolist() == [0, 0, 0, 1, 1, 1]
    assert data["names"][0] == "cat/0.png" and data["test_names"][-1] == "dog/2.png"
    assert str(data["embedder_spec"]) == "stub" and str(data["embedder_id"]) == "stub@1"

    seen = stub.seen
    other = colour_folder(tmp_path / "other", ["cat", "cow"], per_class=2)
    result = runner.invoke(app, ["embed", str(train), "--test-folder", str(other), "-o", str(tmp_path / "g.npz"),
                                 "--embedder", "stub", "--cache", str(tmp_path / "c.sqlite")])
    assert result.exit_code == 2
    assert "only in train: dog; only in other: cow" in result.output
    assert stub.seen == seen and not (tmp_path / "g.npz").exists()


def test_embed_help_matches_what_it_accepts():
    result = runner.invoke(app, ["embed", "--help"], env={"COLUMNS": "200"})
    assert "root/<class>/<image>" in result.output and "flat" not in result.output
    for spec in ("auto", "open_clip:<model>/<pretrained-tag>", "open_clip:local-dir:<folder>",
                 "efficientnet-lite0@<px>"):
        assert spec in result.output
    assert "--test-folder" in result.output


def blobs_npz(path, names=True):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 8))
    labels = np.repeat(np.arange(3), 40)
    test_labels = np.repeat(np.arange(3), 20)
    arrays = dict(features=centres[labels] + rng.normal(0, 0.3, (120, 8)), labels=labels,
                  test_features=centres[test_labels] + rng.normal(0, 0.3, (60, 8)), test_labels=test_labels,
                  class_names=np.array(["ant", "bee", "cow"]))
    if names:
        arrays["names"] = np.array([f"{['ant', 'bee', 'cow'][c]}/{i}.jpg" for i, c in enumerate(labels)])
    np.savez(path, **arrays)
    return arrays


def test_simulate_logs_pool_test_and_schedule_and_runs_the_seed_experiment(tmp_path):
    blobs_npz(tmp_path / "b.npz")
    result = runner.invoke(app, ["simulate", str(tmp_path / "b.npz"), "--seeds", "2", "--rounds", "2",
                                 "--initial", "6", "--batch-size", "6", "--strategies", "random,gaussian,margin+nn2",
                                 "--positive-class", "bee", "--ref-image", "bee/45.jpg", "--seed-nn", "4",
                                 "--output-dir", str(tmp_path / "o")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "pool: 120 images, 2 classes; test: 60 images (the data's own test set); " \
           "schedule: 6 (4 nearest to the reference, 2 random) then 2 rounds of 6 = 18 labels; 2 seeds" in result.output
    curves = pd.read_csv(tmp_path / "o" / "curves.csv")
    assert sorted(curves["n_labeled"].unique()) == [6, 12, 18]
    # Two panels (accuracy and paired difference to random): twice as wide as a single plot.
    assert Image.open(tmp_path / "o" / "curves.png").size[0] == 13 * 120

    result = runner.invoke(app, ["simulate", str(tmp_path / "b.npz"), "--ref-image", "no/such.jpg"])
    assert result.exit_code == 2 and "neither an image file nor a row name" in result.output
    result = runner.invoke(app, ["simulate", str(tmp_path / "b.npz"), "--positive-class", "bat"])
    assert result.exit_code == 2 and "positive class 'bat' is not one of ant, bee, cow" in result.output


def test_initial_pool_starts_from_the_reference_neighbours():
    features = np.array([[1, 0], [0, 1], [0.9, 0.1], [-1, 0], [0.8, 0.3], [0.1, 0.9]], np.float32)
    settings = SimulationSettings(initial=3, reference=np.array([1.0, 0.0]), seed_nn=2)
    pool = initial_pool(features, settings, seed=0)
    assert pool[:2].tolist() == [0, 2] and len(set(pool.tolist())) == 3 and pool[2] not in (0, 2)
    settings.seed_nn = None
    assert initial_pool(features, settings, seed=0).tolist() == [0, 2, 4]


def test_summary_says_never_reached_and_takes_mid_budget():
    rows = []
    for seed in range(2):
        for budget, base, good, bad in ((10, 0.2, 0.4, 0.1), (20, 0.4, 0.8, 0.2), (30, 0.8, 0.9, 0.3)):
            rows += [{"strategy": "random", "seed": seed, "n_labeled": budget, "accuracy": base},
                     {"strategy": "good", "seed": seed, "n_labeled": budget, "accuracy": good},
                     {"strategy": "bad", "seed": seed, "n_labeled": budget, "accuracy": bad}]
    curves = pd.DataFrame(rows)
    # random at 25 labels: 0.6 (interpolated); good reaches 0.6 at 15 labels -> ratio 15 / 25.
    summary = summarize(curves, "random", mid_budget=25)
    assert summary.loc["good", "label_ratio_at_mid"] == pytest.approx(0.6)
    assert summary.loc["good", "labels_to_baseline_final"] == pytest.approx(20.0)  # good is at random's final 0.8 at 20
    table, note = format_summary(summary)
    assert table.loc["bad", "labels_to_baseline_final"] == NEVER_REACHED
    assert table.loc["bad", "label_ratio_at_mid"] == NEVER_REACHED
    assert "bad (labels_to_baseline_final)" in note and "good" not in note
    assert "nan" not in table.to_string().lower()
    with pytest.raises(ValueError, match="mid budget 40 is outside the schedule's 10..30"):
        summarize(curves, "random", mid_budget=40)


def test_similar_by_name_by_file_and_bad_inputs(stub, tmp_path):
    folder = colour_folder(tmp_path / "imgs", ["red", "green"], per_class=4)
    out = tmp_path / "e.npz"
    assert runner.invoke(app, ["embed", str(folder), "-o", str(out), "--embedder", "stub",
                               "--cache", str(tmp_path / "c.sqlite")]).exit_code == 0
    result = runner.invoke(app, ["similar", "red/0.png", "--embeddings", str(out), "--k", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert "3 nearest of 8" in lines[0] and "exact" in lines[0]
    assert [line.split()[-1] for line in lines[1:]] == ["red/1.png", "red/2.png", "red/3.png"]

    query = tmp_path / "q.png"
    Image.new("RGB", (4, 4), (30, 245, 30)).save(query)  # as green/0, a shade away from green/1
    result = runner.invoke(app, ["similar", str(query), "--embeddings", str(folder), "--k", "2",
                                 "--embedder", "stub", "--cache", str(tmp_path / "c.sqlite")])
    assert result.exit_code == 0, result.output
    assert [line.split()[-1] for line in result.output.strip().splitlines()[-2:]] == ["green/0.png", "green/1.png"]

    result = runner.invoke(app, ["similar", "red/0.png", "--embeddings", str(tmp_path / "c.sqlite")])
    assert result.exit_code == 2 and "holds no names" in result.output
    blobs_npz(tmp_path / "old.npz")
    result = runner.invoke(app, ["similar", str(query), "--embeddings", str(tmp_path / "old.npz")])
    assert result.exit_code == 2 and "pass --embedder" in result.output
    result = runner.invoke(app, ["similar", str(query), "--embeddings", str(tmp_path / "old.npz"), "--embedder", "stub"])
    assert result.exit_code == 2 and "4 dimensions, the embeddings have 8" in result.output


def test_positive_f1_by_hand():
    from labelers.simulate import positive_f1

    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    predicted = np.array([1, 0, 0, 1, 0, 0, 0, 0])  # tp 1, fp 1, fn 2: F1 = 2 / (2 + 3)
    assert positive_f1(truth, predicted, 1) == pytest.approx(0.4)
    assert positive_f1(truth, np.zeros(8, int), 1) == 0.0  # "Reject" everywhere: accuracy 5/8, F1 0
    assert positive_f1(np.zeros(3, int), np.zeros(3, int), 1) == 0.0


def test_binary_simulation_reports_the_positive_class_f1(tmp_path):
    blobs_npz(tmp_path / "b.npz")
    result = runner.invoke(app, ["simulate", str(tmp_path / "b.npz"), "--seeds", "2", "--rounds", "1",
                                 "--initial", "6", "--batch-size", "6", "--strategies", "random,margin",
                                 "--positive-class", "bee", "--output-dir", str(tmp_path / "o")],
                           env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    curves = pd.read_csv(tmp_path / "o" / "curves.csv")
    summary = pd.read_csv(tmp_path / "o" / "summary.csv", index_col=0)
    final = curves[curves["round"] == 1].groupby("strategy")["positive_f1"].mean()
    assert summary["final_positive_f1"].to_dict() == pytest.approx(final.to_dict(), abs=1e-4)
    assert "final_positive_f1" in result.output
    # Without --positive-class there is no positive class to score.
    result = runner.invoke(app, ["simulate", str(tmp_path / "b.npz"), "--seeds", "2", "--rounds", "1",
                                 "--initial", "6", "--batch-size", "6", "--output-dir", str(tmp_path / "m")])
    assert result.exit_code == 0 and "positive_f1" not in pd.read_csv(tmp_path / "m" / "curves.csv")


def test_ratio_intervals_cover_the_point_ratio_and_say_never_reached():
    from labelers.learning_curves import ratio_intervals

    rows = []
    for seed in range(4):
        for budget, base, good, bad in ((10, 0.2, 0.4, 0.1), (20, 0.4, 0.8, 0.2), (30, 0.8, 0.9, 0.3)):
            rows += [{"strategy": "random", "seed": seed, "n_labeled": budget, "accuracy": base},
                     {"strategy": "good", "seed": seed, "n_labeled": budget, "accuracy": good},
                     {"strategy": "bad", "seed": seed, "n_labeled": budget, "accuracy": bad}]
    ci = ratio_intervals(pd.DataFrame(rows), "random", mid_budget=25, resamples=50)
    # identical seeds: every resample gives the point ratios (15 / 25 at mid, 20 / 30 at the end)
    assert ci.loc["good", "label_ratio_at_mid_lo"] == pytest.approx(0.6)
    assert ci.loc["good", "label_ratio_at_mid_hi"] == pytest.approx(0.6)
    assert ci.loc["good", "final_ratio_hi"] == pytest.approx(20 / 30)
    assert ci.loc["bad", "final_ratio_lo"] == np.inf
