"""The CS570 seed's three shipped configs run through `labelloop relabel --config` on a few real scenes."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labelloop.cli import app

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def scenes_json(tmp_path_factory):
    from labelers.formats.relabel_json import ClassIndex, write_class_index, write_relabel_json
    from labelers.relabel.scenes import compose_scenes, load_objects

    root = tmp_path_factory.mktemp("config_scenes")
    items, labels, names = load_objects("mnist", per_class=3)
    made = compose_scenes(items, labels, 3, root / "scenes", canvas=64, n_classes=10, seed=3)
    write_relabel_json(root / "train.json", [(str(p), [int(o)]) for p, o in zip(made.paths, made.original)])
    write_class_index(root / "class_index.json", ClassIndex(list(names), list(names)))
    return root, made


def _run(root, out, *args):
    result = CliRunner().invoke(app, ["relabel", "--data", str(root / "train.json"), "--class-index",
                                      str(root / "class_index.json"), "--embedder", "efficientnet-lite0@32",
                                      "--cache", str(root / "cache.sqlite"), "--output-dir", str(out), *args])
    assert result.exit_code == 0, result.output
    return json.loads((out / "rounds.json").read_text()), json.loads((out / "labels.json").read_text())["data"]


# (config, the confidence it selects, its passes, its threshold); MC perturbation's 25 AutoAugment views are
# cut to 2 here (--passes overrides the config), the rest is the shipped file
@pytest.mark.parametrize("config, confidence, passes, threshold", [
    ("relabel_naive.yaml", "naive", None, 0.6),
    ("relabel_mc_dropout.yaml", "mc-dropout", 20, 0.5),
    ("relabel_mc_perturbation.yaml", "mc-perturbation", 2, 0.3)])
def test_seed_config_runs_through_the_cli(scenes_json, tmp_path, monkeypatch, config, confidence, passes, threshold):
    root, made = scenes_json
    monkeypatch.chdir(tmp_path)  # the config's relabeled_dataset_save_path is relative to the working folder
    extra = ["--passes", "2", "--num-crops", "2"] if confidence == "mc-perturbation" else []
    saved, rows = _run(root, tmp_path / "out", "--config", str(CONFIGS / config), *extra)
    settings = saved["settings"]
    assert (settings["confidence"], settings["rule"], settings["threshold"]) == (confidence, "argmax", threshold)
    if passes is not None:
        assert settings["passes"] == passes
    assert len(saved["rounds"]) == 2  # round 0 (originals) + the seed's one relabel round
    assert len(rows) == 3
    # the seed's rule keeps the original label of every image
    assert all(int(o) in row["labels"] for o, row in zip(made.original, rows))
    # ... and writes the copy its relabeled_dataset_save_path names (train1_<setting>.json)
    copy = json.loads((tmp_path / config.replace("relabel_", "train1_").replace(".yaml", ".json")).read_text())
    assert [r["labels"] for r in copy["data"]] == [r["labels"] for r in rows]


def test_max_images_overrides_the_configs_num_relabel(scenes_json, tmp_path, monkeypatch):
    root, _ = scenes_json
    monkeypatch.chdir(tmp_path)
    saved, rows = _run(root, tmp_path / "out", "--config", str(CONFIGS / "relabel_naive.yaml"), "--max-images", "2")
    assert len(rows) == 2 and saved["inputs"]["max_images"] == "2"
