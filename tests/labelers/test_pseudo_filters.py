"""CoT-PL's mask filters on hand-made masks, with CoT-PL's thresholds as defaults."""
import numpy as np
import pytest

from labelers.pseudo.filters import (combined_score, drop_low_scores, drop_small_boxes, filter_proposals,
                                     mask_iou_matrix, mask_nms, suppress_inner, top_k_fallback)
from labelers.pseudo.proposals import Proposal, mask_box, remove_small_regions
from labelers.pseudo.settings import FilterSettings


def rect(x0, y0, x1, y1, size=(200, 200)):
    mask = np.zeros(size, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_combined_score_is_the_product():
    assert combined_score(0.9, 0.8) == pytest.approx(0.72)


def test_mask_iou_matrix_hand_computed():
    a, b = rect(0, 0, 10, 10), rect(5, 0, 15, 10)  # overlap 50 px, union 150
    iou = mask_iou_matrix([Proposal(a, 1), Proposal(b, 1)])
    assert iou[0, 1] == pytest.approx(50 / 150)
    assert iou[0, 0] == pytest.approx(1.0)


def test_drop_low_scores_drops_at_the_threshold_and_sorts():
    kept = drop_low_scores([Proposal(rect(0, 0, 5, 5), 0.7), Proposal(rect(0, 0, 5, 5), 0.71),
                            Proposal(rect(0, 0, 5, 5), 0.9)])
    assert [p.score for p in kept] == [0.9, 0.71]  # 0.7 is "<= 0.7": dropped


def test_mask_nms_drops_the_lower_scored_near_duplicate_only():
    big = rect(0, 0, 100, 100)
    near = rect(0, 0, 100, 95)        # IoU 0.95 with big
    half = rect(0, 0, 100, 70)        # IoU 0.70 with big: kept at 0.8
    kept = mask_nms([Proposal(near, 0.8), Proposal(big, 0.9), Proposal(half, 0.75)])
    assert [p.score for p in kept] == [0.9, 0.75]


def test_suppress_inner_drops_the_mask_inside_another():
    outer = Proposal(rect(0, 0, 100, 100), 0.8)   # 10 000 px
    inner = Proposal(rect(10, 10, 40, 40), 0.9)   # 900 px, all inside: covers 1.0 and 0.09
    apart = Proposal(rect(150, 150, 190, 190), 0.85)
    kept = suppress_inner([inner, outer, apart])
    assert kept == [outer, apart]


def test_suppress_inner_keeps_partial_overlaps():
    a = Proposal(rect(0, 0, 100, 100), 0.9)
    b = Proposal(rect(50, 0, 150, 100), 0.8)      # half of b inside a: cover 0.5 < 0.85
    assert suppress_inner([a, b]) == [a, b]


def test_drop_small_boxes_uses_the_box_area_not_the_mask_area():
    diagonal = np.zeros((200, 200), dtype=bool)
    diagonal[np.arange(150), np.arange(150)] = True   # 150 px mask, 150 x 150 = 22 500 px^2 box
    small = rect(0, 0, 99, 100)                       # 9 900 px^2 < 10 000
    kept = drop_small_boxes([Proposal(diagonal, 0.9), Proposal(small, 0.9)])
    assert len(kept) == 1 and kept[0].mask is diagonal


def test_top_k_fallback_only_when_nothing_survives():
    candidates = [Proposal(rect(0, 0, 5, 5), s) for s in (0.1, 0.5, 0.3, 0.4)]
    assert [p.score for p in top_k_fallback([], candidates)] == [0.5, 0.4, 0.3]
    assert top_k_fallback(candidates[:1], candidates) == candidates[:1]


def test_filter_proposals_falls_back_to_top_3_when_all_scores_are_low():
    proposals = [Proposal(rect(0, 0, 120 + 10 * i, 120 + 10 * i), 0.1 * (i + 1)) for i in range(5)]
    settings = FilterSettings(mask_nms_iou=1.0, inner_cover=1.01)  # isolate the fallback
    kept = filter_proposals(proposals, settings)
    assert [round(p.score, 1) for p in kept] == [0.5, 0.4, 0.3]


def test_filter_proposals_chain_on_a_scene():
    big = Proposal(rect(0, 0, 150, 150), 0.9)
    dup = Proposal(rect(0, 0, 150, 148), 0.85)       # NMS
    inside = Proposal(rect(20, 20, 60, 60), 0.95)    # inner suppression
    tiny = Proposal(rect(160, 160, 190, 190), 0.95)  # box area 900 < 10 000
    low = Proposal(rect(0, 0, 200, 200), 0.5)        # score
    assert filter_proposals([big, dup, inside, tiny, low]) == [big]


def test_remove_small_regions_removes_islands_and_holes_below_min_area():
    mask = rect(0, 0, 50, 50)
    mask[20:25, 20:25] = False        # 25 px hole
    mask[100:105, 100:105] = True     # 25 px island
    cleaned = remove_small_regions(mask, 100)
    assert cleaned[22, 22] and not cleaned[102, 102]
    assert cleaned.sum() == 2500
    assert mask_box(cleaned) == (0, 0, 50, 50)
