"""`labelloop relabel --regions sam`: the boxes of SAM's best masks as regions, on a tiny random SAM (mechanics
only: its masks mean nothing) and real scenes of two CIFAR-10 tiles; the refusals of a run without weights."""
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from labelloop.cli import app
from labelers.pseudo.proposals import Proposal
from labelers.relabel.regions import Box, RegionError, propose, sam_boxes, sam_regions
from tests.labelers.test_relabel_cli import write_scene_files

# the tiny SAM's masks are small and its scores near 0: CoT-PL's thresholds would leave the whole image only
LOOSE = ["--sam-points-per-side", "4", "--sam-crop-layers", "0", "--sam-min-iou", "0", "--sam-min-stability", "0",
         "--sam-min-mask-area", "0"]


@pytest.fixture(scope="module")
def tiny_sams(tmp_path_factory):
    """Two tiny random SAM checkpoints (seeds 0 and 1) in their own folders."""
    from labelers.pseudo.tiny import build_tiny_sam

    root = tmp_path_factory.mktemp("tiny_sams")
    return build_tiny_sam(root / "a", seed=0), build_tiny_sam(root / "b", seed=1)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """12 training and 8 held-out 64x32 scenes, a labels CSV, the truth JSON and classes.txt."""
    root = tmp_path_factory.mktemp("sam_scenes")
    return root, write_scene_files(root, 8, 12, 8)


def _relabel(root, out, *extra):
    return CliRunner().invoke(app, ["relabel", "--data", str(root / "train" / "labels.csv"), "--class-index",
                                    str(root / "classes.txt"), "--holdout", str(root / "held" / "truth.json"),
                                    "--cache", str(root / "cache.sqlite"), "--embedder", "efficientnet-lite0@96",
                                    "--confidence", "naive", "--rounds", "1", "--output-dir", str(out), *extra])


def _mask(width, height, left, top, right, bottom, hole=False):
    mask = np.zeros((height, width), bool)
    mask[top:bottom, left:right] = True
    if hole:  # another mask with the same tight box
        mask[top + 1:bottom - 1, left + 1:right - 1] = False
    return mask


def test_sam_boxes_are_best_first_without_tiny_repeated_or_whole_image_boxes():
    w, h = 40, 20  # 800 px: 4 % is 32 px
    proposals = [Proposal(_mask(w, h, 0, 0, 4, 4), 0.99),        # 16 px: tiny, dropped
                 Proposal(_mask(w, h, 0, 0, 40, 20), 0.95),      # the whole image: region 0 already
                 Proposal(_mask(w, h, 0, 0, 10, 10), 0.9),
                 Proposal(_mask(w, h, 0, 0, 10, 10, hole=True), 0.8),  # same box as the 0.9 mask
                 Proposal(_mask(w, h, 20, 5, 40, 20), 0.5),
                 Proposal(_mask(w, h, 10, 0, 30, 20), 0.6)]
    assert sam_boxes(proposals, w, h, max_regions=2) == [Box(0, 0, 10, 10), Box(10, 0, 30, 20)]
    assert sam_boxes(proposals, w, h, max_regions=5) == [Box(0, 0, 10, 10), Box(10, 0, 30, 20), Box(20, 5, 40, 20)]


def test_propose_names_the_sam_model_sam_regions_need():
    from PIL import Image

    with pytest.raises(RegionError, match="--sam-model"):
        propose(Image.new("RGB", (8, 8)), "sam", name="x.png")


def test_sam_regions_on_real_scenes_are_whole_first_inside_and_at_most_num_crops_plus_one(scenes, tiny_sams,
                                                                                         one_torch_thread):
    from labelers.images import load_image
    from labelers.pseudo.proposals import SamProposer
    from labelers.pseudo.settings import SamSettings

    _, train = scenes
    images = [load_image(p) for p in train.paths[:4]]
    proposer = SamProposer(SamSettings(model=str(tiny_sams[0]), points_per_side=4, crop_n_layers=0,
                                       pred_iou_thresh=0.0, stability_score_thresh=0.0, min_mask_region_area=0))
    regions = sam_regions(proposer, images, max_regions=2)
    assert len(regions) == 4
    for image, boxes in zip(images, regions):
        assert boxes[0] == Box(0, 0, *image.size)
        assert 1 <= len(boxes) <= 3 and len(set(boxes)) == len(boxes)
        assert all(0 <= b.left < b.right <= image.width and 0 <= b.top < b.bottom <= image.height for b in boxes)
        assert all(b.area >= 0.04 * image.width * image.height for b in boxes)
    assert any(len(boxes) > 1 for boxes in regions), "the tiny SAM gave no region besides the whole image"


def test_cli_sam_regions_run_once_per_run_and_resume_with_another_sam_is_refused(scenes, tiny_sams, tmp_path,
                                                                                  monkeypatch, one_torch_thread):
    import labelers.pseudo.proposals as proposals

    built, proposed = [], []

    class CountedSam(proposals.SamProposer):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

        def propose(self, images):
            proposed.extend(images)
            return super().propose(images)
    monkeypatch.setattr(proposals, "SamProposer", CountedSam)
    root, train = scenes
    out = tmp_path / "sam"
    result = _relabel(root, out, "--regions", "sam", "--sam-model", str(tiny_sams[0]), "--num-crops", "2", *LOOSE)
    assert result.exit_code == 0, result.output
    assert len(built) == 1 and len(proposed) == 12 + 8  # train and holdout regions from one SAM, each image once
    rows = json.loads((out / "labels.json").read_text())["data"]
    assert [Path(r["img_path"]).name for r in rows] == [p.name for p in train.paths]
    assert all(o in r["labels"] and set(r["labels"]) <= {0, 1, 2} for o, r in zip(train.original, rows))
    saved = json.loads((out / "rounds.json").read_text())["inputs"]
    assert (saved["regions"], saved["sam_model"], saved["sam_points_per_side"], saved["sam_crop_layers"]) == \
        ("sam", str(tiny_sams[0]), 4, 0)
    again = _relabel(root, out, "--regions", "sam", "--sam-model", str(tiny_sams[1]), "--num-crops", "2", *LOOSE,
                     "--rounds", "2", "--resume")
    assert again.exit_code == 2 and "cannot --resume" in again.output
    assert f"sam_model: saved '{tiny_sams[0]}', now '{tiny_sams[1]}'" in again.output


def test_sam_regions_without_a_sam_model_are_refused_before_reading_anything(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["relabel", "--data", str(tmp_path / "missing.csv"), "--regions", "sam",
                                      "--output-dir", str(out)])
    assert result.exit_code == 2 and "--regions sam needs --sam-model" in result.output
    assert "huggingface-cli download" in result.output and not out.exists()


def test_sam_options_without_sam_regions_are_refused(tmp_path):
    result = CliRunner().invoke(app, ["relabel", "--data", str(tmp_path / "missing.csv"), "--regions", "grid",
                                      "--sam-points-per-side", "8", "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--sam-points-per-side only apply to --regions sam" in result.output


@pytest.mark.parametrize("what", ["empty folder", "config without weights", "no such folder"])
def test_a_sam_model_without_weights_is_named_and_nothing_is_written(scenes, tiny_sams, tmp_path, what):
    import shutil

    root, _ = scenes
    folder = tmp_path / "sam"
    if what == "empty folder":
        folder.mkdir()
    elif what == "config without weights":
        shutil.copytree(tiny_sams[0], folder)
        (folder / "model.safetensors").unlink()
    out = tmp_path / "out"
    result = _relabel(root, out, "--regions", "sam", "--sam-model", str(folder))
    assert result.exit_code == 2, result.output
    assert f"--sam-model {folder}: " + ("no such folder" if what == "no such folder" else "no SAM weights there") \
        in result.output
    assert "huggingface-cli download" in result.output and not out.exists()


def test_sam_regions_on_ray_are_refused_before_any_embedding(scenes, tiny_sams, tmp_path):
    root, _ = scenes
    out = tmp_path / "sam-ray"
    result = _relabel(root, out, "--regions", "sam", "--sam-model", str(tiny_sams[0]), "--ray")
    assert result.exit_code == 2 and "--regions sam does not run on --ray" in result.output
    assert not out.exists()
