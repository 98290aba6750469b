"""The seams between `labelloop label`, `export` and `train`: the seed's commands, and a run used from elsewhere."""
import json
import shutil

import pytest
from typer.testing import CliRunner

from labelers.formats.auto_labels import read_auto_labels
from labelers.sample_data import cifar10_subset
from labelloop.cli import app

runner = CliRunner()


@pytest.fixture()
def folder(tmp_path):
    """An ImageFolder tree `work/imgs/<class>/NNNN.jpg` of 20 real CIFAR-10 test images (2 per class)."""
    paths, _ = cifar10_subset("test", per_class=2)
    root = tmp_path / "work" / "imgs"
    for path in paths:
        (root / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / path.parent.name / path.name)
    return root


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("auto_cl, mode", [(True, "complementary"), (False, "ordinary")])
def test_the_seeds_labeling_commands_run_by_renaming_the_program(folder, tiny_vlm_dirs, tmp_path, auto_cl, mode):
    """`python main.py --model llava --dataset cifar10 --batch_size 8 --seed 1126 --num_rounds 3
    --output_dir logs/ [--auto_cl] --long_label`, with a tiny model and a small folder for the two names."""
    out = tmp_path / "logs"
    result = _invoke("label", "--model", tiny_vlm_dirs["llava-next"], "--dataset", folder, "--batch_size", 8,
                     "--seed", 1126, "--num_rounds", 3, "--output_dir", out, *(["--auto_cl"] if auto_cl else []),
                     "--long_label", "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert (run["mode"], run["rounds"], run["long_label"], run["batch_size"]) == (mode, 3, True, 8)
    assert run["seed"] == (1126 if auto_cl else None)  # the candidate seed means nothing for ordinary labels
    rows = read_auto_labels(out / "auto_labels.csv")
    assert len(rows) == 20 and all(len(labels) == 3 for _, labels in rows)


def test_the_seeds_model_names_and_dataset_name_resolve():
    from labelers.vlm.inputs import read_inputs
    from labelers.vlm.loading import resolve_model
    from labelers.vlm.settings import load_settings

    settings = load_settings()
    assert resolve_model("llava", settings) == resolve_model("llava_next", settings) == \
        "llava-hf/llava-v1.6-mistral-7b-hf"
    items, names = read_inputs("cifar10")  # the seed's --dataset cifar10: the training set in CIFAR order
    assert len(items) == 50_000 and names[9] == "truck"
    assert (items[1].key, items[1].label, items[1].path.parts[-3:]) == ("camion_s_000148.png", "truck",
                                                                        ("train", "truck", "0000.jpg"))


def test_the_run_directory_is_checked_before_the_model_loads(folder, tmp_path, monkeypatch):
    from labelers.vlm.labeler import VLMLabeler

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(VLMLabeler, "from_pretrained", no_load)
    out = tmp_path / "run"
    out.mkdir()
    model = str(tmp_path / "some-model")
    earlier = {"mode": "complementary", "method": "score", "model_id": model, "prompt_hash": "0" * 16,
               "class_names": sorted(p.name for p in folder.iterdir()), "long_label": False, "rounds": 3,
               "num_options": 4, "distinct": True, "balance": True, "seed": 1126, "max_retries": 2, "batch_size": 4}
    (out / "run.json").write_text(json.dumps(earlier))
    result = _invoke("label", folder, "--auto_cl", "--model", model, "--output-dir", out)
    assert result.exit_code == 2 and "already holds a run" in result.output
    result = _invoke("label", folder, "--auto_cl", "--model", model, "--output-dir", out, "--resume",
                     "--batch-size", 8)
    assert result.exit_code == 2 and "batch_size: earlier 4, now 8" in result.output


def test_label_export_train_from_other_working_directories(folder, tiny_vlm_dirs, tmp_path, monkeypatch):
    """Label with relative paths in one folder, export from a second, train from a third."""
    work = folder.parent
    monkeypatch.chdir(work)
    result = _invoke("label", "imgs", "--auto_cl", "--model", tiny_vlm_dirs["qwen2-vl"], "--output-dir", "run",
                     "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (work / "run" / "labels.jsonl").read_text().splitlines()]
    order = [r["image"] for r in records if r["round"] == 0]
    assert order != sorted(order)  # -R balancing labels in a shuffled order: the case that needs care
    (tmp_path / "export").mkdir()
    monkeypatch.chdir(tmp_path / "export")
    result = _invoke("export", "../work/run", "auto_labels.csv")
    assert result.exit_code == 0, result.output
    assert read_auto_labels("auto_labels.csv") == read_auto_labels(work / "run" / "auto_labels.csv")  # input order
    (tmp_path / "train").mkdir()
    monkeypatch.chdir(tmp_path / "train")
    common = ["--strategy", "SCL", "--type", "NL", "--model", "linear", "--epoch", 1, "--image-size", 8,
              "--batch_size", 8, "--no-progress"]
    result = _invoke("train", "--dataset", "../work/run", "--output_dir", "from_run", *common)
    assert result.exit_code == 0, result.output
    result = _invoke("train", "--dataset", "../work/imgs", "--label_path", "../export/auto_labels.csv",
                     "--output_dir", "from_csv", *common)
    assert result.exit_code == 0, result.output
    for name in ("from_run", "from_csv"):
        saved = json.loads((tmp_path / "train" / name / "results.json").read_text())["results"]
        assert saved["train_images"] + saved["valid_images"] == 20 and saved["num_cl"] == 3
        assert saved["valid_labels"] == "true labels"  # the folder's classes, carried by the run as gold


def test_candidate_options_with_ordinary_labels_are_named_as_ignored(folder, tmp_path, monkeypatch):
    from labelers.vlm.labeler import VLMLabeler

    def stop(*args, **kwargs):
        raise RuntimeError("stop before loading")

    monkeypatch.setattr(VLMLabeler, "from_pretrained", stop)
    result = _invoke("label", folder, "--num_options", 3, "--no-balance", "--output-dir", tmp_path / "run")
    assert isinstance(result.exception, RuntimeError)
    assert "--num-options, --balance/--no-balance only apply to complementary labels" in result.output
