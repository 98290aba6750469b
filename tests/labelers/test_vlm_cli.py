"""`labelloop label` end to end on 20 real CIFAR-10 images with the tiny random VLMs."""
import csv
import json
import shutil

import pytest
import typer
from typer.testing import CliRunner

from labelers.formats.auto_labels import read_auto_labels
from labelers.sample_data import cifar10_subset
from labelers.vlm import cli as vlm_cli


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    vlm_cli.register(app)
    app.command("noop")(lambda: None)  # a second command keeps "label" a named subcommand
    return app


@pytest.fixture(scope="module")
def cifar_sources(tmp_path_factory):
    """The same 20 CIFAR-10 images as an ImageFolder tree, a CSV and a Label Studio JSON export."""
    root = tmp_path_factory.mktemp("cli_sources")
    paths, labels = cifar10_subset("test", per_class=2, offset=5)
    folder = root / "folder"
    for path in paths:
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.parent.name / path.name)
    with open(root / "images.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label"])
        writer.writerows([f"folder/{p.parent.name}/{p.name}", p.parent.name] for p in paths)
    tasks = [{"id": i + 1, "data": {"image": f"/data/local-files/?d=folder/{p.parent.name}/{p.name}"},
              "annotations": [{"result": [{"value": {"choices": [p.parent.name]}, "from_name": "label",
                                           "to_name": "image", "type": "choices"}]}]}
             for i, p in enumerate(paths)]
    (root / "export.json").write_text(json.dumps(tasks))
    return root


def _invoke(app, *args):
    return CliRunner().invoke(app, ["label", *map(str, args)])


@pytest.mark.parametrize("model", ["qwen2-vl", "llava-next"])
def test_label_folder_in_both_modes(app, cifar_sources, tiny_vlm_dirs, tmp_path, model):
    for mode, rounds in (("complementary", 3), ("ordinary", 1)):
        out = tmp_path / mode
        result = _invoke(app, cifar_sources / "folder", "--mode", mode, "--model", tiny_vlm_dirs[model],
                         "--output-dir", out, "--batch-size", 8, "--device", "cpu")
        assert result.exit_code == 0, result.output
        rows = read_auto_labels(out / "auto_labels.csv")
        assert len(rows) == 20 and all(len(labels) == rounds for _, labels in rows)
        records = [json.loads(l) for l in (out / "labels.jsonl").read_text().splitlines()]
        assert len(records) == 20 * rounds
        assert {r["mode"] for r in records} == {mode}
        report = json.loads((out / "quality.json").read_text())
        assert ("accuracy" if mode == "ordinary" else "cl_noise") in report
        assert (out / "confusion.png").exists()


def test_csv_and_label_studio_inputs_give_the_same_labels(app, cifar_sources, tiny_vlm_dirs, tmp_path):
    model = tiny_vlm_dirs["qwen2-vl"]
    common = ["--mode", "ordinary", "--model", model, "--device", "cpu", "--no-progress"]
    a = _invoke(app, cifar_sources / "images.csv", "--output-dir", tmp_path / "csv", *common)
    b = _invoke(app, cifar_sources / "export.json", "--output-dir", tmp_path / "ls",
                "--local-files-root", cifar_sources, *common)
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    from_csv = read_auto_labels(tmp_path / "csv" / "auto_labels.csv")
    from_ls = read_auto_labels(tmp_path / "ls" / "auto_labels.csv")
    assert [r[1] for r in from_csv] == [r[1] for r in from_ls]
    assert from_ls[0][0] == from_csv[0][0] == "folder/airplane/0005.jpg"
    assert (tmp_path / "ls" / "quality.md").exists()          # ground truth from the annotations


def test_generate_method_and_options_from_the_cli(app, cifar_sources, tiny_vlm_dirs, tmp_path):
    out = tmp_path / "gen"
    result = _invoke(app, cifar_sources / "folder", "--mode", "complementary", "--model", tiny_vlm_dirs["llava-next"],
                     "--output-dir", out, "--method", "generate", "--max-retries", 1, "--rounds", 2, "--num-options", 3,
                     "--no-distinct", "--no-balance", "--long-label", "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    records = [json.loads(l) for l in (out / "labels.jsonl").read_text().splitlines()]
    assert len(records) == 40 and all(len(r["candidates"]) == 3 and r["attempts"] <= 2 for r in records)
    assert all(r["method"] == "generate" for r in records)
    labels = {r["label_name"] for r in records}
    assert labels <= set(json.loads((out / "run.json").read_text())["class_names"]) | {"unparseable"}
    report = json.loads((out / "quality.json").read_text())
    assert report["unparseable_rate"]["total"] == 40


@pytest.mark.parametrize("classes, options, rounds", [(["cat", "dog", "frog"], 2, 2), (["cat", "dog"], 2, 1)])
def test_few_classes_get_candidate_sets_that_fit_and_a_note(app, cifar_sources, tiny_vlm_dirs, tmp_path, classes,
                                                            options, rounds):
    # The walkthrough: a 3-class folder stopped at "num_options must be between 2 and the number of classes
    # (3), got 4" though the user set nothing. Defaults now shrink to fit, and say so; set values are checked.
    folder = tmp_path / "few"
    for name in classes:
        shutil.copytree(cifar_sources / "folder" / name, folder / name)
    out = tmp_path / "run"
    result = _invoke(app, folder, "--mode", "complementary", "--model", tiny_vlm_dirs["qwen2-vl"],
                     "--output-dir", out, "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"{options} options per question and {rounds} round(s) instead of the defaults 4 and 3" in \
        " ".join(result.output.split())
    records = [json.loads(l) for l in (out / "labels.jsonl").read_text().splitlines()]
    assert len(records) == 2 * len(classes) * rounds and all(len(r["candidates"]) == options for r in records)
    given = _invoke(app, folder, "--mode", "complementary", "--model", tiny_vlm_dirs["qwen2-vl"],
                    "--output-dir", tmp_path / "given", "--device", "cpu", "--num-options", "4")
    assert given.exit_code == 2 and "num_options must be between 2 and the number of classes" in given.output


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "no such file"),
    (["{flat}", "--classes", "aquatic mammals,small mammals,fish"], "merge classes"),
    (["{flat}"], "--classes"),
    (["{folder}", "--model", "{missing}"], "does not exist"),
    (["{folder}", "--num-options", "11", "--auto_cl"], "num_options"),
])
def test_bad_input_exits_2_with_a_message(app, cifar_sources, tmp_path, args, message):
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(cifar_sources / "folder" / "cat" / "0005.jpg", flat / "a.jpg")
    args = [a.format(missing=tmp_path / "nope", folder=cifar_sources / "folder", flat=flat) for a in args]
    result = _invoke(app, *args, "--output-dir", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
