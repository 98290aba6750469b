"""`labelloop relabel` end to end on real scenes: two CIFAR-10 images side by side, EfficientNet-Lite0."""
import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from labelloop.cli import app

CLASSES = ["airplane", "automobile", "frog"]  # CIFAR-10 classes 0, 1, 6
CIFAR_INDEX = {"airplane": 0, "automobile": 1, "frog": 6}


def _sources(offset, per_class):
    from labelers.sample_data import cifar10_subset

    paths, labels = cifar10_subset("train", per_class=per_class, offset=offset)
    keep = [i for i, lab in enumerate(labels) if lab in CIFAR_INDEX.values()]
    remap = {v: i for i, v in enumerate(CIFAR_INDEX.values())}
    return [paths[i] for i in keep], np.array([remap[int(labels[i])] for i in keep])


def _write_truth(path, scenes):
    path.write_text(json.dumps({"data": [{"img_path": p.name, "labels": t} for p, t in zip(scenes.paths, scenes.truth)]}))


def write_scene_files(root, per_class, n_train, n_held):
    """Write train/ (scenes, labels.csv, truth.json) and held/ (scenes, truth.json) pair scenes of CIFAR objects
    and classes.txt under `root`; return the training SceneSet."""
    from labelers.relabel.scenes import pair_scenes

    train = pair_scenes(*_sources(0, per_class), n_train, root / "train", two_share=0.5, n_classes=3, seed=0)
    held = pair_scenes(*_sources(per_class, per_class), n_held, root / "held", two_share=0.5, n_classes=3, seed=1)
    with (root / "train" / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label"])
        writer.writerows((p.name, CLASSES[o]) for p, o in zip(train.paths, train.original))
    _write_truth(root / "train" / "truth.json", train)
    _write_truth(root / "held" / "truth.json", held)
    (root / "classes.txt").write_text("\n".join(CLASSES))
    return train


@pytest.fixture(scope="module")
def scene_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return root, write_scene_files(root, 60, 100, 100)


def _relabel(root, out, *extra):
    return CliRunner().invoke(app, ["relabel", "--data", str(root / "train" / "labels.csv"), "--class-index",
                                    str(root / "classes.txt"), "--holdout", str(root / "held" / "truth.json"),
                                    "--cache", str(root / "cache.sqlite"), "--embedder", "efficientnet-lite0@96", "--output-dir", str(out), *extra])


def _f1(labels_path, truth):
    from labelers.relabel.metrics import multi_hot, set_metrics

    rows = json.loads(labels_path.read_text())["data"]
    return set_metrics(multi_hot([r["labels"] for r in rows], 3), multi_hot(truth, 3))


@pytest.mark.slow
def test_relabel_beats_keep_original_on_real_scenes(scene_run, tmp_path):
    from labelers.relabel.metrics import multi_hot, set_metrics

    root, train = scene_run
    result = _relabel(root, tmp_path / "run", "--regions", "random", "--num-crops", "4", "--confidence",
                      "mc-dropout", "--passes", "10", "--label", "per-class", "--target-precision", "0.9",
                      "--rounds", "2")
    assert result.exit_code == 0, result.output
    keep = set_metrics(multi_hot([[o] for o in train.original], 3), multi_hot(train.truth, 3))
    ours = _f1(tmp_path / "run" / "labels.json", train.truth)
    print("keep-original", keep, "ours", ours)
    assert ours["f1"] > keep["f1"] + 0.03 and ours["precision"] >= 0.85, (ours, keep)
    suggestions = json.loads((tmp_path / "run" / "suggestions_ls.json").read_text())
    assert len(suggestions) == 100 and suggestions[0]["predictions"][0]["result"][0]["type"] == "choices"
    # evaluate agrees with the metrics computed here (paths in labels.json are absolute: compare via ReaL order)
    real = tmp_path / "real.json"
    by_name = {p.name: t for p, t in zip(train.paths, train.truth)}
    real.write_text(json.dumps([by_name[name] for name in sorted(by_name)]))
    evaluated = CliRunner().invoke(app, ["relabel", "evaluate", str(tmp_path / "run" / "labels.json"), str(real),
                                         "--output", str(tmp_path / "metrics.json")])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "metrics.json").read_text())["f1"] == pytest.approx(ours["f1"])


@pytest.mark.slow
def test_seed_config_runs_and_resume_continues(scene_run, tmp_path):
    root, train = scene_run
    config = tmp_path / "naive.yaml"
    config.write_text("crop_method: random\nnum_crops: 3\ncrop_size_method: fixed\nconfidence_measure: naive\n"
                      "post_proc_logits: average\nthreshold: 0.6\nnum_relabel: 40\n"
                      f"relabeled_dataset_save_path: {tmp_path / 'train1_naive.json'}\n")
    result = _relabel(root, tmp_path / "seed", "--config", str(config))
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "train1_naive.json").read_text())["data"]
    assert len(rows) == 40 and all(o in r["labels"] for o, r in zip(train.original, rows))  # the seed keeps it
    again = _relabel(root, tmp_path / "seed", "--config", str(config), "--resume", "--rounds", "2")
    assert again.exit_code == 0, again.output
    rounds = json.loads((tmp_path / "seed" / "rounds.json").read_text())["rounds"]
    assert [r["round"] for r in rounds][:2] == [0, 1]


def test_an_image_too_small_for_the_crop_size_is_named_by_the_cli(scene_run, tmp_path):
    root, _ = scene_run
    result = _relabel(root, tmp_path / "small", "--crop-size", "48", "--rounds", "1")
    assert result.exit_code == 2 and "scene_00000.png" in result.output and "too small for 48-pixel" in result.output


@pytest.mark.slow
def test_cam_regions_run_and_resume_with_other_regions_is_refused(scene_run, tmp_path):
    root, _ = scene_run
    result = _relabel(root, tmp_path / "cam", "--regions", "cam", "--num-crops", "2", "--confidence", "naive",
                      "--rounds", "1")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "cam" / "rounds.json").read_text())
    assert saved["inputs"]["regions"] == "cam" and saved["settings"]["folds"] == 5
    again = _relabel(root, tmp_path / "cam", "--regions", "random", "--num-crops", "2", "--confidence", "naive",
                     "--rounds", "2", "--resume")
    assert again.exit_code == 2 and "cannot --resume" in again.output
    assert "regions: saved 'cam', now 'random'" in again.output


@pytest.mark.slow
def test_without_a_holdout_the_cli_warns_that_rounds_are_unvalidated(scene_run, tmp_path):
    root, _ = scene_run
    result = CliRunner().invoke(app, ["relabel", "--data", str(root / "train" / "labels.csv"), "--class-index",
                                      str(root / "classes.txt"), "--cache", str(root / "cache.sqlite"), "--embedder",
                                      "efficientnet-lite0@96", "--output-dir", str(tmp_path / "r"), "--regions", "random",
                                      "--num-crops", "4", "--confidence", "naive", "--rounds", "1"])
    assert result.exit_code == 0, result.output
    assert "WITHOUT validation" in result.output
    assert json.loads((tmp_path / "r" / "round_1.json").read_text())["metrics"]["validated"] is False


def test_cam_regions_on_ray_are_refused_before_any_embedding(scene_run, tmp_path):
    root, _ = scene_run
    result = _relabel(root, tmp_path / "cam-ray", "--regions", "cam", "--ray")
    assert result.exit_code == 2 and "--regions cam does not run on --ray" in result.output
    assert not (tmp_path / "cam-ray" / "rounds.json").exists()


def test_label_files_chain_across_folders_export_relabel_evaluate(scene_run, tmp_path, monkeypatch):
    """export in one folder, relabel from a second into a third, evaluate from a fourth: every file's
    img_path resolves from its own folder, so the chain matches the same images (it broke when paths were
    written as seen from the folder the command ran in)."""
    root, train = scene_run
    for name in ("a", "b", "c", "d", "e"):
        (tmp_path / name).mkdir()
    runner = CliRunner()
    given = root / "train" / "given.csv"   # an auto_labels.csv of ordinary labels: file, label (no header)
    given.write_text("".join(f"{p.name},{CLASSES[o]}\n" for p, o in zip(train.paths, train.original)))
    monkeypatch.chdir(tmp_path / "a")
    exported = runner.invoke(app, ["export", str(given), "../b/seed.json", "--ordinary",
                                   "--format", "relabel-json", "--classes", ",".join(CLASSES),
                                   "--data", str(root / "train")])
    assert exported.exit_code == 0, exported.output
    first = json.loads((tmp_path / "b" / "seed.json").read_text())["data"][0]["img_path"]
    assert (tmp_path / "b" / first).resolve() == train.paths[0].resolve()
    monkeypatch.chdir(tmp_path / "c")
    ran = runner.invoke(app, ["relabel", "--data", "../b/seed.json", "--class-index", "../b/seed_class_index.json",
                              "--cache", str(root / "cache.sqlite"), "--embedder", "efficientnet-lite0@96",
                              "--rounds", "1", "--output-dir", "../d"])
    assert ran.exit_code == 0, ran.output
    monkeypatch.chdir(tmp_path / "e")
    scored = runner.invoke(app, ["relabel", "evaluate", "../d/labels.json", str(root / "train" / "truth.json")])
    assert scored.exit_code == 0, scored.output
    assert "f1" in scored.output


def test_replace_precision_without_a_holdout_is_refused_before_reading_anything(tmp_path):
    result = CliRunner().invoke(app, ["relabel", "--data", str(tmp_path / "labels.csv"), "--replace-precision", "0.8",
                                      "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--replace-precision needs --holdout" in result.output
    assert not (tmp_path / "out").exists()


def test_replace_and_target_precision_reach_the_rounds(scene_run, tmp_path, monkeypatch):
    import labelers.relabel.cli as cli
    import labelers.relabel.rounds as rounds

    root, _ = scene_run
    seen = {}

    def fake_embed(paths, *args, **kwargs):
        return [np.zeros((1, 4), np.float32) for _ in paths], [None for _ in paths]

    def fake_rounds(regions, original, class_names, settings, **kwargs):
        seen["settings"] = settings
        raise ValueError("stopped by the test")

    monkeypatch.setattr(cli, "_embed_set", fake_embed)
    monkeypatch.setattr(rounds, "run_rounds", fake_rounds)
    result = _relabel(root, tmp_path / "r", "--label", "per-class", "--target-precision", "0.7",
                      "--replace-precision", "0.85")
    assert result.exit_code == 2 and "stopped by the test" in result.output
    assert seen["settings"].replace_precision == 0.85 and seen["settings"].target_precision == 0.7
    default = _relabel(root, tmp_path / "d", "--label", "per-class")
    assert default.exit_code == 2 and seen["settings"].replace_precision is None


def test_the_learned_rule_without_a_holdout_is_refused_before_reading_anything(tmp_path):
    result = CliRunner().invoke(app, ["relabel", "--data", str(tmp_path / "labels.csv"), "--label", "learned",
                                      "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--label learned needs --holdout" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_learned_rule_beats_keep_original_on_real_scenes_and_judges_the_original(scene_run, tmp_path):
    from labelers.relabel.metrics import multi_hot, set_metrics

    root, train = scene_run
    result = _relabel(root, tmp_path / "run", "--regions", "grid", "--confidence", "naive", "--label", "learned",
                      "--target-recall", "0.9", "--rounds", "2")
    assert result.exit_code == 0, result.output
    assert "rule learned, drop original" in result.output  # the rule judges the given label by default
    keep = set_metrics(multi_hot([[o] for o in train.original], 3), multi_hot(train.truth, 3))
    ours = _f1(tmp_path / "run" / "labels.json", train.truth)
    print("keep-original", keep, "learned", ours)
    assert ours["f1"] > keep["f1"] + 0.03, (ours, keep)
    rounds = json.loads((tmp_path / "run" / "rounds.json").read_text())
    assert rounds["settings"]["target_recall"] == 0.9 and rounds["settings"]["rule"] == "learned"
    assert "learned_threshold" in rounds["rounds"][1]["metrics"]
