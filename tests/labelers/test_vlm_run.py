"""Run directory: both formats, resume after a crash or a SIGKILL, refusal to mix runs, quality report."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from labelers.formats.auto_labels import labels_to_indices, read_auto_labels
from labelers.sample_data import cifar10_subset
from labelers.vlm.inputs import read_inputs
from labelers.vlm.quality import quality_report, report_markdown, wilson_interval
from labelers.vlm.run import RunError, run_labeling


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """An ImageFolder tree of 20 real CIFAR-10 test images (2 per class)."""
    root = tmp_path_factory.mktemp("cifar_folder")
    paths, _ = cifar10_subset("test", per_class=2)
    for path in paths:
        (root / path.parent.name).mkdir(exist_ok=True)
        shutil.copy(path, root / path.parent.name / path.name)
    return root


def _jsonl(out):
    return [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]


class Crash(RuntimeError):
    pass


def test_run_writes_seed_csv_and_jsonl(tiny_labelers, image_folder, tmp_path):
    items, names = read_inputs(image_folder)
    out = tmp_path / "run"
    summary = run_labeling(tiny_labelers["llava-next"], items, names, out, "complementary", batch_size=6,
                           progress=False)
    assert summary.labeled == 20
    rows = read_auto_labels(out / "auto_labels.csv")
    assert [r[0] for r in rows] == [i.key for i in items]            # input order, relative paths
    assert all(len(labels) == 3 for _, labels in rows)
    indexed = labels_to_indices(rows, names, long_label=False)
    records = _jsonl(out)
    assert len(records) == 60
    by_key = {(r["image"], r["round"]): r for r in records}
    for key, labels in indexed:
        assert len(set(labels)) == 3                                    # distinct CLs per image
        for round_index, label in enumerate(labels):
            record = by_key[(key, round_index)]
            assert record["label"] == label and label in record["candidates"]
            assert record["candidate_names"] == [names[c] for c in record["candidates"]]
            assert record["model_id"] == tiny_labelers["llava-next"].model_id and len(record["prompt_hash"]) == 16
            assert abs(sum(record["option_probs"]) - 1) < 1e-9
            assert record["true_label"] == names.index(key.split("/")[0])
    quality = json.loads((out / "quality.json").read_text())
    noise = sum(r["label"] == r["true_label"] for r in records) / 60
    assert quality["cl_noise"]["value"] == pytest.approx(noise)
    assert (out / "confusion.png").stat().st_size > 1000 and "cl noise" in (out / "quality.md").read_text()
    sets = (out / "label_set.csv").read_text().splitlines()
    assert sets[0].startswith(items[0].key + ',"') and sets[0].count(",") == 3 * 4


def _crash_after(labeler, calls_before_crash):
    """Make ``labeler.ask`` raise on its (n+1)-th call; return the list counting the images asked."""
    asked, original = [], labeler.ask

    def ask(images, questions, *args, **kwargs):
        if len(asked) == calls_before_crash:
            raise Crash("killed")
        asked.append(len(images))
        return original(images, questions, *args, **kwargs)

    labeler.ask = ask
    return asked


@pytest.mark.parametrize("mode", ["complementary", "ordinary"])
def test_resume_after_a_crash_finishes_only_the_rest(tiny_labelers, tmp_path, image_folder, mode):
    from labelers.vlm.labeler import VLMLabeler

    items, names = read_inputs(image_folder)
    base = tiny_labelers["qwen2-vl"]
    rounds = 3 if mode == "complementary" else 2
    reference = tmp_path / "reference"
    run_labeling(base, items, names, reference, mode, rounds=rounds, batch_size=4, progress=False)

    crashing = VLMLabeler(base.vlm, base.settings)
    _crash_after(crashing, calls_before_crash=2 * rounds + 1)   # dies inside the third batch
    out = tmp_path / "run"
    with pytest.raises(Crash):
        run_labeling(crashing, items, names, out, mode, rounds=rounds, batch_size=4, progress=False)
    finished = {r["image"] for r in _jsonl(out)}
    assert len(finished) == 8                                   # two batches flushed, the third lost
    with open(out / "labels.jsonl", "a") as fh:                 # and a line torn by the kill
        fh.write('{"schema": "labelloop.vlm-labels/1", "image": "dog/00')

    resumed = VLMLabeler(base.vlm, base.settings)
    asked = _crash_after(resumed, calls_before_crash=10 ** 6)
    summary = run_labeling(resumed, items, names, out, mode, rounds=rounds, batch_size=4, resume=True,
                           progress=False)
    assert (summary.skipped, summary.labeled) == (8, 12)
    assert sum(asked) == 12 * rounds                            # finished images were not asked again
    assert (out / "auto_labels.csv").read_text() == (reference / "auto_labels.csv").read_text()
    strip = lambda rs: sorted((r["image"], r["round"], r["label"], r["candidates"]) for r in rs)
    assert strip(_jsonl(out)) == strip(_jsonl(reference))


def test_a_second_run_into_the_same_directory_is_refused(tiny_labelers, tmp_path, image_folder):
    items, names = read_inputs(image_folder)
    out = tmp_path / "run"
    run_labeling(tiny_labelers["qwen2-vl"], items[:4], names, out, "ordinary", progress=False)
    before = (out / "labels.jsonl").read_text()
    with pytest.raises(RunError, match="--resume"):
        run_labeling(tiny_labelers["qwen2-vl"], items[:4], names, out, "ordinary", progress=False)
    with pytest.raises(RunError, match="mode"):
        run_labeling(tiny_labelers["qwen2-vl"], items[:4], names, out, "complementary", resume=True, progress=False)
    with pytest.raises(RunError, match="model_id"):
        run_labeling(tiny_labelers["llava-next"], items[:4], names, out, "ordinary", resume=True, progress=False)
    assert (out / "labels.jsonl").read_text() == before        # nothing lost


def test_unreadable_image_is_reported_and_the_rest_labeled(tiny_labelers, tmp_path, image_folder):
    folder = tmp_path / "imgs"
    shutil.copytree(image_folder, folder)
    (folder / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    items, names = read_inputs(folder)
    summary = run_labeling(tiny_labelers["qwen2-vl"], items, names, tmp_path / "run", "ordinary", progress=False)
    assert list(summary.failed) == ["cat/broken.jpg"] and "cat/broken.jpg" in summary.failed["cat/broken.jpg"]
    rows = read_auto_labels(tmp_path / "run" / "auto_labels.csv")
    assert len(rows) == 20 and "cat/broken.jpg" not in {r[0] for r in rows}


@pytest.mark.slow
def test_resume_after_sigkill_of_the_cli(tiny_vlm_dirs, tmp_path):
    """A real `labelloop label` process killed with SIGKILL, then resumed."""
    paths, _ = cifar10_subset("train", per_class=12)
    folder = tmp_path / "imgs"
    for path in paths:
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.parent.name / path.name)
    out = tmp_path / "run"
    cmd = [sys.executable, "-c", "from labelloop.cli import main; main()", "label", str(folder), "--model",
           str(tiny_vlm_dirs["qwen2-vl"]), "--output-dir", str(out), "--batch-size", "1", "--no-progress",
           "--device", "cpu", "--auto_cl"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    jsonl = out / "labels.jsonl"
    while proc.poll() is None and not (jsonl.exists() and len(jsonl.read_text().splitlines()) >= 9):
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {json.loads(l)["image"] for l in jsonl.read_text().splitlines() if l.endswith("}")}
    assert 3 <= len(done_before) < 120 and not (out / "auto_labels.csv").exists()
    result = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "already done" in result.stdout
    rows = read_auto_labels(out / "auto_labels.csv")
    assert len(rows) == 120
    records = [json.loads(l) for l in jsonl.read_text().splitlines()]
    assert len(records) == 360 and len({(r["image"], r["round"]) for r in records}) == 360


def test_quality_report_numbers_on_known_records():
    names = ["a", "b", "c"]
    def rec(image, r, label, truth, candidates=(0, 1, 2), attempts=1):
        return {"image": image, "round": r, "label": label, "true_label": truth, "candidates": list(candidates),
                "attempts": attempts}
    records = [rec("x", 0, 1, 0), rec("x", 1, 0, 0, attempts=2), rec("y", 0, 2, 1), rec("y", 1, None, 1, attempts=3)]
    report = quality_report(records, names, "complementary", 3)
    assert report["cl_noise"]["value"] == pytest.approx(1 / 3)
    assert report["unparseable_rate"]["value"] == pytest.approx(1 / 4)
    assert report["reask_rate"]["value"] == pytest.approx(3 / 7)
    assert report["images_with_duplicate_cls"]["value"] == 0
    np.testing.assert_allclose(report["transition_matrix"], [[0.5, 0.5, 0], [0, 0, 1], [0, 0, 0]])
    assert report["label_share"] == {"a": pytest.approx(1 / 3), "b": pytest.approx(1 / 3), "c": pytest.approx(1 / 3)}
    ordinary = quality_report([rec("x", 0, 0, 0), rec("x", 1, 0, 0), rec("y", 0, 2, 1)], names, "ordinary")
    assert ordinary["accuracy"]["value"] == pytest.approx(2 / 3) and ordinary["vote_accuracy"]["value"] == 0.5
    low, high = wilson_interval(5, 10)
    assert low < 0.5 < high and wilson_interval(0, 0) is None


def test_a_class_named_unparseable_is_refused(tiny_labelers, tmp_path, image_folder):
    items, _ = read_inputs(image_folder)
    with pytest.raises(ValueError, match="unparseable"):
        run_labeling(tiny_labelers["qwen2-vl"], [i.__class__(i.key, i.path) for i in items[:2]],
                     ["cat", "Unparseable", "dog"], tmp_path / "run", "ordinary", progress=False)


def test_quality_report_when_nothing_parsed_has_no_shares_and_no_negative_zero():
    names = ["a", "b", "c"]
    records = [{"image": f"i{k}", "round": 0, "label": None, "true_label": k % 3, "candidates": [0, 1, 2],
                "attempts": 3} for k in range(6)]
    report = quality_report(records, names, "complementary", 3)
    assert report["max_label_share"] is None and report["label_share"] is None
    assert report["transition_row_entropy"] == [None, None, None]
    text = report_markdown(report)
    assert "Largest label share" not in text and "-0.000" not in text and "No answer could be parsed" in text
    one_class = [{"image": "x", "round": 0, "label": 1, "true_label": 0, "candidates": [0, 1], "attempts": 1}]
    single = quality_report(one_class, names, "complementary", 2)
    assert single["transition_row_entropy"][0] == 0.0 and "-0.000" not in report_markdown(single)
