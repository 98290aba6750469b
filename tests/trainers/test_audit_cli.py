"""`labelloop audit` end to end on real CIFAR-10 images with injected label noise."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from labelers.sample_data import CIFAR10_CLASSES, cifar10_subset
from labelloop.cli import app

runner = CliRunner()
EMBEDDER = "efficientnet-lite0@128"
NOISE = 0.2


@pytest.fixture(scope="session")
def noisy_cifar(tmp_path_factory):
    """Return (folder, paths, true labels, noisy labels, cache file): 200 CIFAR-10 train images, 20 % flipped.

    The cache file is shared by every test here, so the images are embedded once per session.
    """
    folder = tmp_path_factory.mktemp("noisy_cifar")
    paths, truth = cifar10_subset("train", 20, offset=2000)
    rng = np.random.default_rng(0)
    noisy = truth.copy()
    flipped = rng.choice(len(truth), int(NOISE * len(truth)), replace=False)
    noisy[flipped] = (truth[flipped] + rng.integers(1, 10, len(flipped))) % 10
    for name, labels in (("noisy.csv", noisy), ("truth.csv", truth)):
        write_csv(folder / name, paths, labels)
    return folder, paths, truth, noisy, folder / "embeddings.sqlite"


def write_csv(path, paths, labels):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows([str(p), CIFAR10_CLASSES[y]] for p, y in zip(paths, labels))


def run_audit(*args):
    result = runner.invoke(app, ["audit", *map(str, args)])
    return result


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_audit_csv_finds_injected_noise_in_real_cifar(noisy_cifar, tmp_path, one_torch_thread):
    folder, paths, truth, noisy, cache = noisy_cifar
    out = tmp_path / "out"
    result = run_audit(folder / "noisy.csv", "--truth", folder / "truth.csv", "--embedder", EMBEDDER,
                       "--cache", cache, "--output-dir", out, "--top", "5")
    assert result.exit_code == 0, result.output
    rows = read_rows(out / "audit.csv")
    assert len(rows) == len(paths)
    qualities = [float(r["quality"]) for r in rows]
    assert qualities == sorted(qualities)  # most suspect first
    by_path = {Path(r["path"]).resolve(): r for r in rows}
    wrong = {p.resolve() for p, t, n in zip(paths, truth, noisy) if t != n}
    flagged = {p for p, r in by_path.items() if r["flagged"] == "1"}
    precision = len(flagged & wrong) / len(flagged)
    assert precision >= 2 * NOISE, f"flagged precision {precision:.2f} is not well above the {NOISE} noise rate"
    assert len(flagged & wrong) >= 0.6 * len(wrong)
    # the CSV's own truth columns agree with what the test injected
    assert {p for p, r in by_path.items() if r["wrong"] == "1"} == wrong
    summary = json.loads((out / "summary.json").read_text())
    assert summary["truth"]["wrong_labels"] == len(wrong) and summary["truth"]["auroc"] > 0.8
    assert (out / "precision_vs_rank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rank  quality" in result.output and "flagged precision" in result.output
    assert "warning: fewer than" not in result.output  # ~20 labels per class: no weak classes to warn about


def test_audit_reads_an_image_folder_tree(noisy_cifar, tmp_path, one_torch_thread):
    folder, paths, truth, noisy, cache = noisy_cifar
    tree = tmp_path / "tree"
    for path, label in zip(paths, noisy):  # the noisy labels as the folder a user sorted images into
        (tree / CIFAR10_CLASSES[label]).mkdir(parents=True, exist_ok=True)
        (tree / CIFAR10_CLASSES[label] / f"{path.parent.name}_{path.name}").symlink_to(path)
    out = tmp_path / "out"
    result = run_audit(tree, "--truth", folder / "truth.csv", "--embedder", EMBEDDER, "--cache", cache,
                       "--output-dir", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["truth"]["wrong_labels"] == int((truth != noisy).sum())
    assert summary["truth"]["precision"] >= 2 * NOISE


def test_audit_reads_a_label_studio_export_whose_control_is_called_class(noisy_cifar, tmp_path, one_torch_thread):
    folder, paths, truth, noisy, cache = noisy_cifar
    tasks = [{"id": i, "data": {"image": f"/data/local-files/?d=cifar/{p.parent.name}/{p.name}"},
              "annotations": [{"result": [{"from_name": "class", "to_name": "image", "type": "choices",
                                           "value": {"choices": [CIFAR10_CLASSES[y]]}}]}]}
             for i, (p, y) in enumerate(zip(paths, noisy))]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    out = tmp_path / "out"
    result = run_audit(export, "--images", paths[0].parent.parent, "--truth", folder / "truth.csv",
                       "--embedder", EMBEDDER, "--cache", cache, "--output-dir", out)
    assert result.exit_code == 0, result.output
    rows = read_rows(out / "audit.csv")
    assert len(rows) == len(paths) and {r["given"] for r in rows} <= set(CIFAR10_CLASSES)
    assert json.loads((out / "summary.json").read_text())["truth"]["precision"] >= 2 * NOISE


def test_audit_reads_an_ordinary_vlm_run_and_uses_its_gold_labels(noisy_cifar, tmp_path, one_torch_thread):
    folder, paths, truth, noisy, cache = noisy_cifar
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"mode": "ordinary", "class_names": CIFAR10_CLASSES}))
    (run / "labels.jsonl").write_text("".join(
        json.dumps({"image": f"{p.parent.name}/{p.name}", "path": str(p), "round": 0,
                    "label": int(n), "true_label": int(t)}) + "\n" for p, t, n in zip(paths, truth, noisy)))
    out = tmp_path / "out"
    result = run_audit(run, "--embedder", EMBEDDER, "--cache", cache, "--output-dir", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["truth"]["wrong_labels"] == int((truth != noisy).sum())  # gold labels read from the run
    assert (out / "precision_vs_rank.png").exists()


def test_a_complementary_vlm_run_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"mode": "complementary", "class_names": CIFAR10_CLASSES}))
    (run / "labels.jsonl").write_text(json.dumps({"image": "a.png", "round": 0, "label": 3}) + "\n")
    result = run_audit(run, "--output-dir", tmp_path / "out")
    assert result.exit_code == 2 and "complementary" in result.output and "ordinary" in result.output


def test_a_label_outside_the_class_list_is_refused(noisy_cifar, tmp_path):
    folder, paths, _, noisy, _ = noisy_cifar
    result = run_audit(folder / "noisy.csv", "--classes", ",".join(CIFAR10_CLASSES[:9]),
                       "--output-dir", tmp_path / "out")
    assert result.exit_code == 2 and "unknown class 'truck'" in result.output


def test_one_class_is_refused_before_embedding(noisy_cifar, tmp_path):
    folder, paths, _, _, cache = noisy_cifar
    write_csv(tmp_path / "one.csv", paths[:5], np.zeros(5, int))
    result = run_audit(tmp_path / "one.csv", "--classes", ",".join(CIFAR10_CLASSES), "--embedder",
                       "no-such-embedder", "--output-dir", tmp_path / "out")
    # the embedder spec is bad too: the label check must come first
    assert result.exit_code == 2 and "at least two classes with 2+ annotations" in result.output
    assert "airplane=5" in result.output
    assert not (tmp_path / "out" / "audit.csv").exists()


def test_a_class_with_one_annotation_is_reported_not_judged(noisy_cifar, tmp_path, one_torch_thread):
    folder, paths, _, noisy, cache = noisy_cifar
    labels = noisy[:60].copy()
    labels[labels == 9] = 8
    labels[0] = 9  # 'truck' has one annotation
    write_csv(tmp_path / "few.csv", paths[:60], labels)
    out = tmp_path / "out"
    result = run_audit(tmp_path / "few.csv", "--embedder", EMBEDDER, "--cache", cache, "--output-dir", out)
    assert result.exit_code == 0, result.output
    assert "cannot judge" in result.output and "'truck' (1)" in result.output
    counts = np.bincount(labels, minlength=10)
    weak = [f"{CIFAR10_CLASSES[k]} ({counts[k]})" for k in range(9) if 2 <= counts[k] < 10]
    assert weak and f"warning: fewer than 10 labels in {', '.join(weak)}:" in " ".join(result.output.split())
    rows = read_rows(out / "audit.csv")
    unjudged = [r for r in rows if r["judged"] == "0"]
    assert len(unjudged) == 1 and unjudged[0]["given"] == "truck" and unjudged[0]["quality"] == ""


def test_a_multi_label_label_studio_export_is_audited_per_class(noisy_cifar, tmp_path, one_torch_thread):
    folder, paths, truth, _, cache = noisy_cifar
    rng = np.random.default_rng(3)
    extra = rng.choice(len(paths), 30, replace=False)  # these tasks carry a second, wrong class
    chosen = [[CIFAR10_CLASSES[y]] for y in truth]
    for i in extra:
        chosen[i].append(CIFAR10_CLASSES[(truth[i] + rng.integers(1, 10)) % 10])
    tasks = [{"id": i, "data": {"image": str(p)},
              "annotations": [{"result": [{"from_name": "tags", "to_name": "image", "type": "choices",
                                           "value": {"choices": c}}]}]} for i, (p, c) in enumerate(zip(paths, chosen))]
    export = tmp_path / "multi.json"
    export.write_text(json.dumps(tasks))
    out = tmp_path / "out"
    result = run_audit(export, "--format", "label-studio-multi", "--classes", ",".join(CIFAR10_CLASSES),
                       "--embedder", EMBEDDER, "--cache", cache, "--output-dir", out)
    assert result.exit_code == 0, result.output
    rows = read_rows(out / "audit.csv")
    top = {Path(r["path"]).resolve() for r in rows[:30]}
    wrong = {paths[i].resolve() for i in extra}
    assert len(top & wrong) >= 15  # a random top 30 would hold about 4.5 of them
    given = {Path(r["path"]).resolve(): r["given"] for r in rows}
    assert all("|" in given[p] for p in wrong)


def test_a_label_studio_export_with_several_controls_needs_label_control(noisy_cifar, tmp_path):
    _, paths, truth, _, _ = noisy_cifar
    tasks = [{"id": i, "data": {"image": str(p)}, "annotations": [{"result": [
        {"from_name": "class", "to_name": "image", "type": "choices", "value": {"choices": [CIFAR10_CLASSES[y]]}},
        {"from_name": "quality", "to_name": "image", "type": "choices", "value": {"choices": ["sharp"]}}]}]}
        for i, (p, y) in enumerate(zip(paths[:10], truth[:10]))]
    export = tmp_path / "two.json"
    export.write_text(json.dumps(tasks))
    result = run_audit(export, "--output-dir", tmp_path / "out")
    assert result.exit_code == 2 and "several label controls (class, quality)" in result.output
    assert "--label-control" in result.output


def test_two_labels_on_one_task_of_a_single_label_audit_are_refused(noisy_cifar, tmp_path):
    _, paths, _, _, _ = noisy_cifar
    tasks = [{"id": 7, "data": {"image": str(paths[0])}, "annotations": [{"result": [
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["cat", "dog"]}}]}]}]
    export = tmp_path / "two_labels.json"
    export.write_text(json.dumps(tasks))
    result = run_audit(export, "--output-dir", tmp_path / "out")
    assert result.exit_code == 2 and "task 1 (id 7) has 2 labels (cat, dog)" in result.output
    assert "label-studio-multi" in result.output


def test_a_truth_file_with_a_class_the_audit_does_not_know_is_refused(noisy_cifar, tmp_path):
    folder, paths, truth, _, _ = noisy_cifar
    with open(tmp_path / "truth.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerow([str(paths[0]), "zebra"])
    result = run_audit(folder / "noisy.csv", "--truth", tmp_path / "truth.csv", "--embedder", "no-such-embedder",
                       "--output-dir", tmp_path / "out")
    assert result.exit_code == 2 and "true class 'zebra' is not one of the audited classes" in result.output


def _auto_labels_run(tmp_path, paths, truth, noisy):
    """A pool of unsorted images (links to the CIFAR files) with auto_labels.csv files naming them: the noisy
    labels (two rounds, the same label) and the true ones."""
    pool = tmp_path / "pool"
    pool.mkdir()
    names = [f"{p.parent.name}_{p.name}" for p in paths]
    for path, name in zip(paths, names):
        (pool / name).symlink_to(path)
    for file, labels in (("auto_labels.csv", noisy), ("truth_auto_labels.csv", truth)):
        (tmp_path / file).write_text("".join(f"{n},{CIFAR10_CLASSES[y]},{CIFAR10_CLASSES[y]}\n"
                                             for n, y in zip(names, labels)))
    return pool, tmp_path / "auto_labels.csv", tmp_path / "truth_auto_labels.csv"


def test_a_truth_auto_labels_csv_is_read_with_the_sources_image_root(noisy_cifar, tmp_path, one_torch_thread,
                                                                     caplog):
    from tests.test_image_root_option import _hinted_options, _options

    _, paths, truth, noisy, cache = noisy_cifar
    pool, labels, truth_csv = _auto_labels_run(tmp_path, paths, truth, noisy)
    out = tmp_path / "out"
    result = run_audit(labels, "--image-root", pool, "--classes", ",".join(CIFAR10_CLASSES), "--truth", truth_csv,
                       "--embedder", EMBEDDER, "--cache", cache, "--output-dir", out)
    assert result.exit_code == 0, result.output
    # No run.json says which kind the labels are: said in audit's words (train's named --strategy and --ordinary)
    assert "note: auto_labels.csv has no run.json beside it" in " ".join(result.output.split())
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert _hinted_options(result.output + logged) <= _options(("audit",)), result.output + logged
    summary = json.loads((out / "summary.json").read_text())
    assert summary["truth"]["items_with_truth"] == len(paths)  # every row matched its image under the root
    assert summary["truth"]["wrong_labels"] == int((truth != noisy).sum())
    rows = read_rows(out / "audit.csv")
    assert sum(int(r["wrong"]) for r in rows) == int((truth != noisy).sum())


def test_a_truth_auto_labels_csv_without_an_image_root_names_audits_option(noisy_cifar, tmp_path):
    from tests.test_image_root_option import _hinted_options, _options

    folder, paths, truth, noisy, _ = noisy_cifar
    _, _, truth_csv = _auto_labels_run(tmp_path, paths, truth, noisy)
    result = run_audit(folder / "noisy.csv", "--truth", truth_csv, "--embedder", "no-such-embedder",
                       "--output-dir", tmp_path / "out")
    assert result.exit_code == 2 and "truth_auto_labels.csv" in result.output and "--image-root" in result.output
    assert _hinted_options(result.output) <= _options(("audit",)), result.output  # was "pass --data"


@pytest.mark.parametrize("role", ["source", "truth"])
def test_a_complementary_auto_labels_csv_is_refused_in_audits_words(noisy_cifar, tmp_path, role):
    from tests.test_image_root_option import _hinted_options, _options

    folder, paths, truth, noisy, _ = noisy_cifar
    pool, labels, truth_csv = _auto_labels_run(tmp_path, paths, truth, noisy)
    (tmp_path / "run.json").write_text(json.dumps({"mode": "complementary", "class_names": CIFAR10_CLASSES}))
    args = [labels] if role == "source" else [folder / "noisy.csv", "--truth", truth_csv]
    result = run_audit(*args, "--image-root", pool, "--classes", ",".join(CIFAR10_CLASSES), "--embedder",
                       "no-such-embedder", "--output-dir", tmp_path / "out")
    assert result.exit_code == 2 and "complementary labels" in result.output, result.output
    assert "an audit checks ordinary labels" in " ".join(result.output.split())
    assert _hinted_options(result.output) <= _options(("audit",)), result.output  # was --strategy, --mode
