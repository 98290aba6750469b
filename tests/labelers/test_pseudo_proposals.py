"""Proposers: SAM through transformers' mask-generation pipeline on a tiny random SamModel (mechanics
only) with CoT-PL's settings, and the classical Felzenszwalb proposer."""
import numpy as np
import pytest
from PIL import Image

from labelers.pseudo.proposals import (FelzenszwalbProposer, ProposerError, SamProposer, make_proposer)
from labelers.pseudo.settings import SamSettings, load_pseudo_settings


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    from labelers.pseudo.tiny import build_tiny_sam

    return build_tiny_sam(tmp_path_factory.mktemp("tiny_sam"))


def test_default_settings_are_cotpl():
    s = load_pseudo_settings()
    assert (s.sam.points_per_side, s.sam.pred_iou_thresh, s.sam.stability_score_thresh, s.sam.box_nms_thresh,
            s.sam.crop_n_layers, s.sam.min_mask_region_area) == (32, 0.7, 0.85, 0.7, 1, 100)
    assert (s.filters.min_score, s.filters.mask_nms_iou, s.filters.fallback_top_k, s.filters.min_box_area) == \
        (0.7, 0.8, 3, 10000)


def test_sam_proposer_gives_boolean_masks_of_the_image_size(tiny_sam, one_torch_thread):
    settings = SamSettings(model=str(tiny_sam), points_per_side=4, pred_iou_thresh=0.0,
                           stability_score_thresh=0.0, min_mask_region_area=0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    [found] = SamProposer(settings).propose([image])
    assert found, "the tiny SAM produced no mask"
    assert all(p.mask.shape == (48, 80) and p.mask.dtype == bool and p.mask.any() for p in found)


def test_sam_score_is_stability_times_predicted_iou(tiny_sam):
    import torch

    proposer = SamProposer(SamSettings(model=str(tiny_sam)))
    logits = torch.full((1, 2, 20, 20), -5.0)
    logits[0, 0, 5:15, 5:15] = 5.0          # stability 1: the same 100 px at thresholds +1 and -1
    logits[0, 1, 5:15, 5:15] = 2.0          # 100 px above +1 ...
    logits[0, 1, 0:5, 5:15] = 0.5           # ... and 50 + 25 px more above -1: stability 100/175
    logits[0, 1, 15:20, 5:10] = 0.5
    iou = torch.tensor([[0.9, 0.8]])
    box = [0, 0, 20, 20]
    _, scores, _ = proposer._combined_filter(logits, iou, (20, 20), box, 0.0, 0.0, 0, 1)
    assert sorted(scores.tolist()) == pytest.approx(sorted([0.9 * 1.0, 0.8 * 100 / 175]))
    # CoT-PL's thresholds (IoU > 0.7, stability > 0.85) leave the stable mask only.
    _, scores, _ = proposer._combined_filter(logits, iou, (20, 20), box, 0.7, 0.85, 0, 1)
    assert scores.tolist() == pytest.approx([0.9])


@pytest.mark.parametrize("crop_layers, crops", [(0, 1), (1, 5)])
def test_sam_prompts_points_per_side_squared_points_per_crop(tiny_sam, one_torch_thread, crop_layers, crops):
    # transformers' points_per_crop is points per side; passing the square would ask 16x more points.
    proposer = SamProposer(SamSettings(model=str(tiny_sam), points_per_side=2, crop_n_layers=crop_layers,
                                       pred_iou_thresh=0.0, stability_score_thresh=0.0, min_mask_region_area=0))
    masks_seen = []
    original = proposer._filter

    def spy(masks, *args):
        masks_seen.append(masks.shape[1])
        return original(masks, *args)
    proposer._filter = spy
    proposer.propose([Image.fromarray(np.zeros((48, 80, 3), dtype=np.uint8))])
    assert sum(masks_seen) == crops * 2 * 2 * 3   # 3 masks per point (multimask output)


def test_sam_thresholds_are_applied(tiny_sam, one_torch_thread):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    loose = SamProposer(SamSettings(model=str(tiny_sam), points_per_side=4, pred_iou_thresh=0.0,
                                    stability_score_thresh=0.0, min_mask_region_area=0)).propose([image])[0]
    strict = SamProposer(SamSettings(model=str(tiny_sam), points_per_side=4, pred_iou_thresh=0.0,
                                     stability_score_thresh=0.999999, min_mask_region_area=0)).propose([image])[0]
    assert len(strict) < len(loose)


def test_sam_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ProposerError, match="cannot load SAM"):
        SamProposer(SamSettings(model=str(tmp_path / "nowhere")))


def test_felzenszwalb_segments_two_flat_regions():
    array = np.zeros((60, 80, 3), dtype=np.uint8)
    array[:, 40:] = 255
    [found] = FelzenszwalbProposer().propose([Image.fromarray(array)])
    assert len(found) == 2
    assert sorted(p.box for p in found) == [(0, 0, 40, 60), (40, 0, 80, 60)]
    assert make_proposer("felzenszwalb").name == "felzenszwalb"
    with pytest.raises(ValueError, match="unknown proposer"):
        make_proposer("selective")
