"""A run streams one record per image per batch, resumes after a kill without duplicating or losing an
image, and shards merged equal one unsharded run; the CLI does it on tiny-coco with tiny models."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelers.pseudo.proposals import FelzenszwalbProposer
from labelers.pseudo.run import (PseudoRunError, list_folder, merge_records, read_records, run_pseudo_labels,
                                 write_outputs, write_records)
from labelers.pseudo.settings import load_pseudo_settings

TINY_COCO = Path("/work/shared/data/tiny-coco/small_coco")
CATEGORIES = ["dog", "cat", "bus"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    for i in range(5):
        array = np.full((64, 64, 3), 30, dtype=np.uint8)
        x, y = rng.integers(0, 30, 2)
        array[y:y + 30, x:x + 30] = rng.integers(100, 255, 3)   # one flat square per scene
        Image.fromarray(array).save(root / f"scene{i}.png")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture(scope="module")
def vlm(tiny_vlm_dirs):
    from labelers.vlm.loading import load_vlm
    from labelers.vlm.settings import load_settings

    return load_vlm(str(tiny_vlm_dirs["qwen2-vl"]), load_settings(), device="cpu")


@pytest.fixture(scope="module")
def settings():
    # Small scenes: no box-area cut, and keep every region the first question sees.
    return load_pseudo_settings(overrides={"filters": {"min_box_area": 0},
                                           "questions": {"min_object_prob": 0.0}})


def run(items, vlm, settings, path, **kwargs):
    return run_pseudo_labels(items, FelzenszwalbProposer(), vlm, CATEGORIES, settings, path, progress=False,
                             batch_size=2, **kwargs)


def same_records(a, b):
    assert [r["image_id"] for r in a] == [r["image_id"] for r in b]
    for x, y in zip(a, b):
        assert [(bx["bbox"], bx["category"]) for bx in x["boxes"]] == [(by["bbox"], by["category"]) for by in y["boxes"]]
        assert [bx["score"] for bx in x["boxes"]] == pytest.approx([by["score"] for by in y["boxes"]], abs=1e-4)


def test_run_writes_every_image_once_and_reports_the_broken_one(folder, vlm, settings, tmp_path, one_torch_thread):
    items = list_folder(folder)
    with pytest.warns(UserWarning, match="broken.jpg"):
        summary = run(items, vlm, settings, tmp_path / "r.jsonl")
    records = read_records(tmp_path / "r.jsonl")
    assert [r["image_id"] for r in records] == [1, 2, 3, 4, 5, 6] and summary["errors"] == 1
    assert records[0]["error"].startswith("cannot read") and records[0]["file"] == "broken.jpg"
    assert all(r["boxes"] for r in records[1:])          # the square (and the background) are found
    with pytest.raises(PseudoRunError, match="--resume"):
        run(items, vlm, settings, tmp_path / "r.jsonl")


def test_resume_after_a_kill_neither_duplicates_nor_loses(folder, vlm, settings, tmp_path, one_torch_thread):
    items = [item for item in list_folder(folder) if item.file != "broken.jpg"]
    full = tmp_path / "full.jsonl"
    run(items, vlm, settings, full)

    class Killed(Exception):
        pass

    class DiesOnSecondBatch(FelzenszwalbProposer):
        calls = 0

        def propose(self, images):
            DiesOnSecondBatch.calls += 1
            if DiesOnSecondBatch.calls == 2:
                raise Killed
            return super().propose(images)
    path = tmp_path / "killed.jsonl"
    with pytest.raises(Killed):
        run_pseudo_labels(items, DiesOnSecondBatch(), vlm, CATEGORIES, settings, path, progress=False, batch_size=2)
    assert len(read_records(path)) == 2                   # the first batch reached the disk
    with open(path, "a") as handle:                       # and a kill mid-write tore a line
        handle.write('{"image_id": 3, "file": "sce')
    with pytest.warns(UserWarning, match="torn last line"):
        summary = run(items, vlm, settings, path, resume=True)
    assert summary["skipped"] == 2 and summary["done"] == 3
    same_records(read_records(path), read_records(full))


def test_shards_merged_equal_one_unsharded_run(folder, vlm, settings, tmp_path, one_torch_thread):
    items = [item for item in list_folder(folder) if item.file != "broken.jpg"]
    run(items, vlm, settings, tmp_path / "all.jsonl")
    run(items[:2], vlm, settings, tmp_path / "s0.jsonl")
    run(items[2:], vlm, settings, tmp_path / "s1.jsonl")
    merged = merge_records([tmp_path / "s1.jsonl", tmp_path / "s0.jsonl"])
    same_records(merged, read_records(tmp_path / "all.jsonl"))
    with pytest.warns(UserWarning, match=r"images 2 \(.*s0.jsonl, .*all.jsonl\), 3 .* same result; kept once"):
        same_records(merge_records([tmp_path / "s0.jsonl", tmp_path / "all.jsonl"]), read_records(tmp_path / "all.jsonl"))
    changed = read_records(tmp_path / "s0.jsonl")
    changed[1]["boxes"][0]["score"] += 0.1                       # image 3 labeled differently in another run
    write_records(changed, tmp_path / "s0b.jsonl")
    with pytest.raises(PseudoRunError, match=r"images 3 \(.*s0b.jsonl, .*all.jsonl\) are in two shards with "
                                             "different results"):
        merge_records([tmp_path / "s0b.jsonl", tmp_path / "all.jsonl"])


def test_write_outputs_gives_all_three_formats(folder, vlm, settings, tmp_path, one_torch_thread):
    items = [item for item in list_folder(folder) if item.file != "broken.jpg"][:2]
    run(items, vlm, settings, tmp_path / "r.jsonl", save_masks=True)
    files = write_outputs(read_records(tmp_path / "r.jsonl"), tmp_path / "out", CATEGORIES)
    coco = json.loads(files["coco"].read_text())
    assert all(a["segmentation"]["size"] == [64, 64] for a in coco["annotations"])
    assert set(json.loads(files["raw"].read_text())) == {"2", "3"}
    assert len(json.loads(files["label_studio"].read_text())) == 2


def test_cli_on_tiny_coco_shards_merge_and_base(tiny_vlm_dirs, tmp_path, one_torch_thread):
    from typer.testing import CliRunner

    from labelloop.cli import app

    config = tmp_path / "c.yaml"
    config.write_text("questions:\n  min_object_prob: 0.0\nfelzenszwalb:\n  scale: 2000\n  min_size: 2000\n")
    common = [str(TINY_COCO / "instances_train2017_small.json"), "--images-root",
              str(TINY_COCO / "train_2017_small"), "--proposer", "felzenszwalb", "--model",
              str(tiny_vlm_dirs["qwen2-vl"]), "--config", str(config), "--labels", "dog,lamp,stick",
              "--device", "cpu"]
    runner = CliRunner()
    for start, end in ((0, 1), (1, 2)):
        result = runner.invoke(app, ["pseudo-label", *common, "--start", str(start), "--end", str(end),
                                     "--output-dir", str(tmp_path / f"shard{start}")])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["pseudo-label", "merge", str(tmp_path / "shard0"), str(tmp_path / "shard1"),
                                 "--output-dir", str(tmp_path / "merged"), "--labels", "dog,lamp,stick",
                                 "--base", str(TINY_COCO / "instances_train2017_small.json"),
                                 "--cross-nms", "0.7", "--class-weights", str(tmp_path / "weights.json")])
    assert result.exit_code == 0, result.output
    assert "2 images from 2 shards" in result.output
    merged = json.loads((tmp_path / "merged" / "merged.json").read_text())
    base = json.loads((TINY_COCO / "instances_train2017_small.json").read_text())
    assert len(merged["annotations"]) > len(base["annotations"])
    instances = json.loads((tmp_path / "merged" / "instances.json").read_text())
    boxed = {c["name"] for c in instances["categories"] if any(a["category_id"] == c["id"]
                                                               for a in instances["annotations"])}
    # new categories: exactly the names with pseudo boxes that the base lacks (names with none are not added)
    assert {c["name"] for c in merged["categories"] if c["supercategory"] == "pseudo"} == boxed - {"dog"}
    weights = json.loads((tmp_path / "weights.json").read_text())
    assert len(weights["weights"]) == len(merged["categories"]) + 1 and weights["weights"][-1] == 0.7
    again = runner.invoke(app, ["pseudo-label", *common, "--start", "0", "--end", "1",
                                "--output-dir", str(tmp_path / "shard0"), "--resume"])
    assert again.exit_code == 0 and "0 images labeled, 1 skipped" in again.output
